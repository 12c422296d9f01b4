"""Text corpora for linalign: the bundled real corpora, the user's own files, deterministic splits.

    from linalign import data
    bbc = data.load_corpus("bbc_news")            # 2,225 labelled articles
    train, test = data.train_test_split(bbc, test_fraction=0.2, seed=0)
    mine = data.load_corpus("reviews.jsonl")      # {"text": ..., "label": ...} per line

Corpus specs understood by :func:`load_corpus`:

  bbc_news, bbc_titles, bbc_body    BBC News articles / titles / bodies, labelled by topic
  bbc_sentences                     about 41k BBC body sentences, unlabelled
  fortunes[:cat1,cat2]              fortune(6) quotations labelled by category (Debian only)
  austen, austen_lines              Jane Austen's novels as sentences / lines, unlabelled (Debian only)
  PATH.jsonl, PATH.csv, PATH.tsv    the user's own file (text and optional label columns)
  PATH.txt                          the user's own file, one unlabelled text per non-empty line

Streaming readers for files too large for memory live in ``linalign.data.stream``.
"""

from __future__ import annotations

import os
import pathlib

from linalign.data.corpora import (AUSTEN_BOOKS, Corpus, DataError, decode_text, fortune_categories,
                                   load_austen, load_bbc_news, load_bbc_sentences, load_fortunes,
                                   split_sentences)
from linalign.data.splits import sample, split_indices, train_test_split
from linalign.data.userdata import load_csv, load_jsonl, load_txt

__all__ = ["AUSTEN_BOOKS", "CORPUS_NAMES", "Corpus", "DataError", "decode_text", "fortune_categories",
           "load_austen", "load_bbc_news", "load_bbc_sentences", "load_corpus", "load_csv", "load_fortunes",
           "load_jsonl", "load_txt", "sample", "split_indices", "split_sentences", "train_test_split"]

CORPUS_NAMES = ("bbc_news", "bbc_titles", "bbc_body", "bbc_sentences", "fortunes", "austen",
                "austen_lines")


def load_corpus(spec: str | os.PathLike, cache_dir=None, **kwargs) -> Corpus:
    """Loads a corpus by name or file path (see the module docstring for the specs).

    Args:
      spec: a bundled corpus name, "fortunes:<cat>[,<cat>]", or a path ending .jsonl/.csv/.tsv/.txt.
      cache_dir: asset cache root for the bundled corpora.
      **kwargs: passed to the file loader (text_field, label_field, name, ...).

    Returns:
      The Corpus.

    Raises:
      DataError: unknown spec, missing file, malformed records.
    """
    s = os.fspath(spec)
    suffix = pathlib.Path(s).suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(s, **kwargs)
    if suffix == ".txt":
        return load_txt(s, **kwargs)
    if suffix in (".csv", ".tsv"):
        kwargs.setdefault("delimiter", "\t" if suffix == ".tsv" else ",")
        return load_csv(s, **kwargs)
    if kwargs:
        raise DataError(f"load_corpus({s!r}): options {sorted(kwargs)} apply only to .jsonl/.csv files")
    if s in ("bbc_news", "bbc_titles", "bbc_body"):
        return load_bbc_news({"bbc_news": "text", "bbc_titles": "title", "bbc_body": "body"}[s], cache_dir)
    if s == "bbc_sentences":
        return load_bbc_sentences(cache_dir=cache_dir)
    if s == "fortunes" or s.startswith("fortunes:"):
        cats = [c.strip() for c in s.partition(":")[2].split(",") if c.strip()] or None
        return load_fortunes(cats, cache_dir=cache_dir)
    if s in ("austen", "austen_lines"):
        return load_austen("line" if s == "austen_lines" else "sentence", cache_dir=cache_dir)
    raise DataError(f"unknown corpus {s!r}: expected one of {', '.join(CORPUS_NAMES)}, "
                    "'fortunes:<category>[,...]', or a path ending in .jsonl, .csv, .tsv or .txt")
