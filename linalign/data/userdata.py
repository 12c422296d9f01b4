"""Loaders for the user's own text: JSON Lines and CSV files with a text column and optional labels.

Both read the whole file into a :class:`~linalign.data.corpora.Corpus` (use ``linalign.data.stream`` for
files too large for memory) and reject malformed input with a :class:`DataError` whose message starts
``<file>:<line>:`` so the offending record can be found at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

from linalign.data.corpora import Corpus, DataError


def _check_path(path, suffixes: tuple[str, ...]) -> pathlib.Path:
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    if suffixes and p.suffix.lower() not in suffixes:
        raise DataError(f"{p}: expected a file ending in {' or '.join(suffixes)}")
    return p


def _finish(p: pathlib.Path, name: str | None, texts, labels, ids, fmt: str, text_field, label_field):
    if not texts:
        raise DataError(f"{p}: no records")
    if labels is not None and len(labels) != len(texts):
        raise DataError(f"{p}: some records have a {label_field!r} field and some do not")
    meta = {"source": str(p), "format": fmt, "text_field": text_field, "label_field": label_field}
    return Corpus(name or p.stem, texts, labels, (), None, ids, meta)


def load_jsonl(path: str | os.PathLike, text_field: str = "text", label_field: str | None = "label",
               name: str | None = None) -> Corpus:
    """Loads a JSON Lines file: one JSON object per line.

    Blank lines are skipped. Labels are read when the first record has ``label_field``; then every record
    must have it. Labels must be JSON strings (quote numeric class ids: ``"label": "3"``).

    Args:
      path: the .jsonl file (UTF-8).
      text_field: key of the text; its value must be a non-empty string.
      label_field: key of the label, or None to ignore labels.
      name: corpus name (default: the file stem).

    Returns:
      Corpus with ids "<line number>".

    Raises:
      DataError: "<file>:<line>: ..." for invalid UTF-8 or JSON, a non-object, a missing or empty text,
        a missing or non-string label.
    """
    p = _check_path(path, ())
    texts: list[str] = []
    labels: list[str] | None = None
    ids: list[str] = []
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{p}:{lineno}"
            try:
                # utf-8-sig on the first line: editors on Windows often start files with a BOM.
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not valid UTF-8 (byte {raw[e.start:e.start + 1]!r} at column "
                                f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            if text_field not in rec:
                raise DataError(f"{where}: missing text field {text_field!r} (keys: {sorted(rec)})")
            text = rec[text_field]
            if not isinstance(text, str):
                raise DataError(f"{where}: text field {text_field!r} is {type(text).__name__}, not a string")
            if not text.strip():
                raise DataError(f"{where}: text field {text_field!r} is empty")
            if label_field is not None:
                if not texts:
                    labels = [] if label_field in rec else None
                if labels is not None:
                    if label_field not in rec:
                        raise DataError(f"{where}: missing label field {label_field!r} (earlier records "
                                        "have one)")
                    label = rec[label_field]
                    if not isinstance(label, str):
                        raise DataError(f"{where}: label {label!r} is {type(label).__name__}, not a string; "
                                        f"quote it, e.g. \"{label_field}\": \"{label}\"")
                    if not label.strip():
                        raise DataError(f"{where}: label field {label_field!r} is empty")
                    labels.append(label)
                elif label_field in rec:
                    raise DataError(f"{where}: has a label field {label_field!r} but the first record does "
                                    "not")
            texts.append(text)
            ids.append(str(lineno))
    return _finish(p, name, texts, labels, ids, "jsonl", text_field, label_field)


def load_csv(path: str | os.PathLike, text_field: str = "text", label_field: str | None = "label",
             delimiter: str = ",", name: str | None = None) -> Corpus:
    """Loads a CSV file with a header row (RFC 4180 quoting; texts may span lines inside quotes).

    Labels are read when the header has ``label_field``; every row then needs a non-empty label.

    Args:
      path: the .csv/.tsv file (UTF-8, optional BOM).
      text_field: header name of the text column.
      label_field: header name of the label column, or None to ignore labels.
      delimiter: field separator ("\\t" for TSV).
      name: corpus name (default: the file stem).

    Returns:
      Corpus with ids "<line number>" (the line where the row starts).

    Raises:
      DataError: "<file>:<line>: ..." for a missing header or column, a row with the wrong number of
        fields, an empty text or label, invalid UTF-8.
    """
    p = _check_path(path, ())
    texts: list[str] = []
    labels: list[str] | None = None
    ids: list[str] = []
    raw = p.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not valid UTF-8 (byte {raw[e.start:e.start + 1]!r})") from None
    try:
        with io.StringIO(content, newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{p}: empty file (expected a header row)") from None
            if text_field not in header:
                raise DataError(f"{p}:1: no column {text_field!r} in header {header}")
            ti = header.index(text_field)
            li = header.index(label_field) if label_field is not None and label_field in header else None
            labels = [] if li is not None else None
            start = reader.line_num + 1
            for row in reader:
                where = f"{p}:{start}"
                start = reader.line_num + 1
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, header has {len(header)}")
                if not row[ti].strip():
                    raise DataError(f"{where}: text column {text_field!r} is empty")
                if li is not None:
                    if not row[li].strip():
                        raise DataError(f"{where}: label column {label_field!r} is empty")
                    labels.append(row[li])
                texts.append(row[ti])
                ids.append(where.rsplit(":", 1)[1])
    except csv.Error as e:
        raise DataError(f"{p}:{reader.line_num}: malformed CSV ({e})") from None
    return _finish(p, name, texts, labels, ids, "csv", text_field, label_field)


def load_txt(path: str | os.PathLike, name: str | None = None) -> Corpus:
    """One text per non-empty line of a UTF-8 text file (unlabelled); surrounding space is stripped.

    Raises:
      DataError: missing file, undecodable bytes (naming the line), no non-empty line.
    """
    p = _check_path(path, (".txt",))
    texts = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"{p}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if line:
                texts.append(line)
    return _finish(p, name, texts, None, None, "txt", None, None)
