"""Streaming record readers over many files: deterministic, resumable, shardable.

Three formats, one record per item:

  * ``text``: plain text, one record per line (trailing newline stripped, empty lines kept
    as records so line numbers stay meaningful).
  * ``jsonl``: one JSON object per line; the record is the object's ``text_field``.
  * ``parquet``: a string column, read batch by batch through pyarrow. pyarrow is not a
    dependency of linalign; this format works only where it is installed.

Nothing is loaded whole: text and JSONL files are read line by line, Parquet files one
record batch at a time. The order is the order of ``paths`` (as given; sort them yourself
if they come from a glob) and, inside a file, line order.

A ``StreamPosition`` (file index, record offset inside that file, byte offset of that
record) says where to resume. The byte offset lets a resumed text/JSONL reader seek
straight to the record instead of re-reading the file; it is checked against the record
offset only when the reader has to count lines anyway (Parquet and ``verify_offsets``).

Sharding between processes is strided over the global record index (record ``i`` belongs to
process ``i % process_count``): every process walks the same files, which keeps each
shard's order stable when files are added at the end, and spreads a few huge files evenly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
FORMATS = ("text", "jsonl", "parquet")


class StreamError(ValueError):
    """A stream's input is missing or malformed, or a resume position does not fit it."""


@dataclasses.dataclass(frozen=True)
class StreamPosition:
    """Where the next record comes from.

    Attributes:
      file_index: index into the reader's ``paths``.
      record_offset: records of that file already consumed (0-based line number of the next
        record for text/JSONL, row number for Parquet).
      byte_offset: byte offset of the next record in text/JSONL files (0 for Parquet).
      global_index: records consumed over all files, before sharding (the stride key).
    """

    file_index: int = 0
    record_offset: int = 0
    byte_offset: int = 0
    global_index: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "StreamPosition":
        missing = {f.name for f in dataclasses.fields(cls)} - set(d)
        if missing:
            raise StreamError(f"stream position {d!r} lacks field(s) {sorted(missing)}")
        return cls(**{k: int(d[k]) for k in (f.name for f in dataclasses.fields(cls))})


def detect_format(path: PathLike) -> str:
    """Format from the file extension: .jsonl/.json -> jsonl, .parquet -> parquet, else text."""
    name = os.fspath(path).lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


class RecordStream:
    """Iterates records of many files in a fixed order, for one process's shard.

    Example::

        stream = RecordStream(paths, process_index=jax.process_index(),
                              process_count=jax.process_count())
        for text in stream:            # or stream.records() for (position_after, text)
            ...
        saved = stream.position        # resume later with RecordStream(..., start=saved)

    Args:
      paths: files in the order to read them.
      fmt: one of FORMATS, or None to detect per file from its extension.
      text_field: JSONL key / Parquet column holding the record text.
      process_index, process_count: this process's shard of the global record sequence.
      start: position to resume from (a ``position`` saved earlier by a reader with the same
        paths and sharding).
    """

    def __init__(self, paths: Sequence[PathLike], fmt: Optional[str] = None, *,
                 text_field: str = "text", process_index: int = 0, process_count: int = 1,
                 start: Optional[StreamPosition] = None):
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError("paths must be a sequence of files, not a single path")
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise StreamError("no input files given")
        for p in self.paths:
            if not os.path.isfile(p):
                raise StreamError(f"input file {p} does not exist")
        if fmt is not None and fmt not in FORMATS:
            raise StreamError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        if not 0 <= process_index < process_count:
            raise StreamError(f"process_index {process_index} outside [0, {process_count})")
        self.fmt = fmt
        self.text_field = text_field
        self.process_index = process_index
        self.process_count = process_count
        self.position = start or StreamPosition()
        if not 0 <= self.position.file_index <= len(self.paths):
            raise StreamError(f"resume position {self.position} names file index "
                              f"{self.position.file_index} but there are {len(self.paths)} files")

    def __iter__(self) -> Iterator[str]:
        for _, text in self.records():
            yield text

    def records(self) -> Iterator[tuple[StreamPosition, str]]:
        """Yields (position after this record, record text) for this process's records.

        ``self.position`` is advanced as records are consumed, also past records that belong
        to other processes, so saving it after any yielded record resumes exactly after it.
        """
        pos = self.position
        for fi in range(pos.file_index, len(self.paths)):
            if fi != pos.file_index:
                pos = StreamPosition(fi, 0, 0, pos.global_index)
            path = self.paths[fi]
            fmt = self.fmt or detect_format(path)
            reader = _parquet_records if fmt == "parquet" else _line_records
            for rec_off, byte_end, text in reader(path, fmt, self.text_field, pos):
                gi = pos.global_index
                pos = StreamPosition(fi, rec_off + 1, byte_end, gi + 1)
                self.position = pos
                if gi % self.process_count == self.process_index:
                    yield pos, text
        self.position = StreamPosition(len(self.paths), 0, 0, pos.global_index)


def _line_records(path: str, fmt: str, text_field: str, pos: StreamPosition):
    """(record offset, byte offset after it, text) for each line from ``pos`` on."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if pos.byte_offset > size:
            raise StreamError(f"resume position byte {pos.byte_offset} is past the end of {path} "
                              f"({size} bytes); the file changed since the position was saved")
        f.seek(pos.byte_offset)
        if 0 < pos.byte_offset < size:
            # A valid resume point is the start of a line (the byte before it is a newline) or
            # the end of the file (a last line without a newline).
            f.seek(pos.byte_offset - 1)
            if f.read(1) != b"\n":
                raise StreamError(f"resume position byte {pos.byte_offset} of {path} is not at the "
                                  "start of a line; the file changed since the position was saved")
        rec = pos.record_offset
        while True:
            raw = f.readline()
            if not raw:
                return
            end = f.tell()
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise StreamError(f"{path}:{rec + 1}: not valid UTF-8 ({e})") from None
            if fmt == "jsonl":
                line = _jsonl_text(line, path, rec, text_field)
            yield rec, end, line
            rec += 1


def _jsonl_text(line: str, path: str, rec: int, text_field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise StreamError(f"{path}:{rec + 1}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or text_field not in obj:
        raise StreamError(f"{path}:{rec + 1}: JSON object lacks the text field {text_field!r}")
    text = obj[text_field]
    if not isinstance(text, str):
        raise StreamError(f"{path}:{rec + 1}: field {text_field!r} is {type(text).__name__}, "
                          "not a string")
    return text


def _parquet_records(path: str, fmt: str, text_field: str, pos: StreamPosition):
    try:
        import pyarrow.parquet as pq  # optional; not a linalign dependency
    except ImportError:
        raise StreamError(f"{path}: reading Parquet needs pyarrow, which is not installed") from None
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise StreamError(f"{path}: Parquet file has no column {text_field!r} "
                          f"(columns: {pf.schema_arrow.names})")
    row = 0
    for batch in pf.iter_batches(columns=[text_field]):
        col = batch.column(0).to_pylist()
        if row + len(col) <= pos.record_offset:
            row += len(col)
            continue
        for i in range(max(0, pos.record_offset - row), len(col)):
            text = col[i]
            if not isinstance(text, str):
                raise StreamError(f"{path}: row {row + i} of column {text_field!r} is "
                                  f"{type(text).__name__}, not a string")
            yield row + i, 0, text
        row += len(col)
    if pos.record_offset > row:
        raise StreamError(f"resume position row {pos.record_offset} is past the end of {path} "
                          f"({row} rows)")


def iter_batches(stream: RecordStream, batch_size: int) -> Iterator[tuple[StreamPosition, list[str]]]:
    """Groups a stream's records into lists of ``batch_size`` (the last may be shorter).

    Yields:
      (position after the batch's last record, texts). Saving that position and resuming
      from it continues with the next batch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    buf: list[str] = []
    pos = stream.position
    for pos, text in stream.records():
        buf.append(text)
        if len(buf) == batch_size:
            yield pos, buf
            buf = []
    if buf:
        yield pos, buf
