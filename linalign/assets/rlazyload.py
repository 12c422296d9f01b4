"""A reader for R lazy-load databases (``Rdata.rdx`` + ``Rdata.rdb``) holding plain data objects.

R packages ship their ``data/`` as a lazy-load database: ``Rdata.rdx`` is a gzip-compressed serialized
index (a named list whose ``variables`` entry maps each object name to an (offset, length) pair) and
``Rdata.rdb`` is a concatenation of objects, each a 4-byte big-endian uncompressed length followed by a
zlib stream of R's XDR serialization. The PyPI package ``rdata`` parses ``.rda``/``.rds`` files but not
this database, and importing it pulls in xarray; the subset of the serialization format that data
objects use (vectors, lists, attributes, pairlists, symbols, references, compact ALTREP sequences) is
small, so it is implemented here with the standard library only.

Objects come back as Python values: character vectors as ``list[str | None]`` (None = NA), numeric
vectors as lists of int/float, generic vectors as lists, with R attributes dropped except where noted.
Use :func:`read_lazyload` for the whole database.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import pathlib
import struct
import zlib

_NILVALUE, _REF, _GLOBALENV, _UNBOUND, _MISSINGARG, _BASENAMESPACE = 254, 255, 253, 252, 251, 250
_NAMESPACE, _PACKAGE, _PERSIST, _EMPTYENV, _BASEENV, _ALTREP = 249, 248, 247, 242, 241, 238
_SYM, _LIST, _CLO, _ENV, _PROM, _LANG, _CHAR, _LGL, _INT, _REAL, _CPLX, _STR, _DOT, _VEC, _EXPR, _RAW = (
    1, 2, 3, 4, 5, 6, 9, 10, 13, 14, 15, 16, 17, 19, 20, 24)
_NA_INT = -(2**31)
_UTF8_MASK, _LATIN1_MASK = 1 << 3, 1 << 2


class RFormatError(ValueError):
    """The bytes are not R serialization this reader understands."""


class RObject(list):
    """A decoded R vector/list that remembers its attributes (``attrs``: name -> value)."""

    def __init__(self, items=(), attrs: dict | None = None):
        super().__init__(items)
        self.attrs = attrs or {}


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where, self.refs = data, 0, where, []

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RFormatError(f"{self.where}: serialization ends early at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper then lower 32 bits
            hi, lo = struct.unpack(">II", self._take(8))
            n = (hi << 32) | lo
        return n

    def header(self) -> None:
        if self._take(2) != b"X\n":
            raise RFormatError(f"{self.where}: not XDR-format R serialization")
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader version
        if version == 3:
            self._take(self.int())  # native encoding name
        elif version != 2:
            raise RFormatError(f"{self.where}: unsupported serialization version {version}")

    def attributes(self, flags: int) -> dict:
        if not flags & (1 << 9):
            return {}
        pairs = self.item()
        return {k: v for k, v in pairs} if isinstance(pairs, list) else {}

    def item(self):
        flags = self.int()
        sxp = flags & 0xFF
        if sxp == _NILVALUE:
            return None
        if sxp in (_GLOBALENV, _UNBOUND, _MISSINGARG, _BASENAMESPACE, _EMPTYENV, _BASEENV):
            return None
        if sxp == _REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if sxp == _SYM:
            name = self.item()
            self.refs.append(name)
            return name
        if sxp in (_PERSIST, _NAMESPACE, _PACKAGE):
            names = self._strsxp_body()
            self.refs.append(names)
            return names
        if sxp == _ENV:
            self.int()  # locked
            placeholder: dict = {}
            self.refs.append(placeholder)
            for _ in range(4):  # enclosure, frame, hash table, attributes
                self.item()
            return placeholder
        if sxp in (_LIST, _LANG, _CLO, _PROM, _DOT):
            # A pairlist: (tag, value) pairs; the tail is read iteratively to keep recursion shallow.
            out = []
            while True:
                self.attributes(flags)  # pairlist attributes carry nothing data needs
                tag = self.item() if flags & (1 << 10) else None
                out.append((tag, self.item()))
                flags = self.int()
                if flags & 0xFF == _NILVALUE:
                    return out
                if flags & 0xFF not in (_LIST, _LANG, _CLO, _PROM, _DOT):
                    self.pos -= 4
                    out.append((None, self.item()))
                    return out
        if sxp == _CHAR:
            n = self.int()
            if n == -1:
                return None
            raw = self._take(n)
            levels = flags >> 12
            return raw.decode("latin-1" if levels & _LATIN1_MASK else "utf-8", errors="replace")
        if sxp == _ALTREP:
            info, state, attrs = self.item(), self.item(), self.item()
            return self._altrep(info, state, attrs)
        if sxp in (_STR, _VEC, _EXPR, _INT, _LGL, _REAL, _CPLX, _RAW):
            if sxp == _STR:
                items = self._strsxp_body()
            elif sxp in (_VEC, _EXPR):
                items = [self.item() for _ in range(self.length())]
            elif sxp in (_INT, _LGL):
                n = self.length()
                items = [None if v == _NA_INT else v for v in struct.unpack(f">{n}i", self._take(4 * n))]
            elif sxp == _REAL:
                n = self.length()
                items = list(struct.unpack(f">{n}d", self._take(8 * n)))
            elif sxp == _CPLX:
                n = self.length()
                vals = struct.unpack(f">{2 * n}d", self._take(16 * n))
                items = [complex(a, b) for a, b in zip(vals[::2], vals[1::2])]
            else:
                items = list(self._take(self.length()))
            return RObject(items, self.attributes(flags))
        raise RFormatError(f"{self.where}: unsupported R object type {sxp} at byte {self.pos - 4}")

    def _strsxp_body(self) -> list:
        n = self.length()
        return [self.item() for _ in range(n)]

    def _altrep(self, info, state, attrs):
        cls = info[0][1] if isinstance(info, list) and info else None
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = state
            n = int(n)
            seq = [start + i * step for i in range(n)]
            return RObject([int(v) for v in seq] if cls == "compact_intseq" else seq)
        if isinstance(cls, str) and cls.startswith("wrap_"):
            return state[0]
        if cls == "deferred_string":
            arg = state[0][1] if isinstance(state, list) and state and isinstance(state[0], tuple) else state
            return RObject([None if v is None else repr(v) for v in arg])
        raise RFormatError(f"{self.where}: unsupported ALTREP class {cls!r}")


def unserialize(data: bytes, where: str = "<bytes>"):
    """Decodes one R object from XDR serialization bytes (``serialize(x, NULL)`` output)."""
    reader = _Reader(data, where)
    reader.header()
    return reader.item()


def _decompress_rdb_chunk(chunk: bytes, compressed: int, where: str) -> bytes:
    if len(chunk) < 5:
        raise RFormatError(f"{where}: truncated entry")
    size = struct.unpack(">I", chunk[:4])[0]
    if compressed in (2, 3):
        # R writes a type byte: 'Z' zlib, '2' bzip2, 'X' xz, '0' stored.
        kind, body = chunk[4:5], chunk[5:]
        out = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
               b"0": lambda b: b}.get(kind, lambda b: b"")(body)
    else:
        out = zlib.decompress(chunk[4:])
    if len(out) != size:
        raise RFormatError(f"{where}: entry decompressed to {len(out)} bytes, header says {size}")
    return out


def read_lazyload(data_dir: str | pathlib.Path, base: str = "Rdata") -> dict:
    """Reads every object of an R lazy-load database.

    Args:
      data_dir: directory holding ``<base>.rdx`` and ``<base>.rdb`` (an R package's ``data/``).
      base: file stem, "Rdata" for package data.

    Returns:
      Object name -> decoded object (see the module docstring for the Python types).

    Raises:
      FileNotFoundError: a file is missing. RFormatError: the bytes are not what R writes.
    """
    data_dir = pathlib.Path(data_dir)
    rdx, rdb = data_dir / f"{base}.rdx", data_dir / f"{base}.rdb"
    raw = rdx.read_bytes()
    index_bytes = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else _decompress_rdb_chunk(raw, 1, str(rdx))
    index_list = unserialize(index_bytes, str(rdx))
    if not isinstance(index_list, RObject) or "names" not in index_list.attrs:
        raise RFormatError(f"{rdx}: index is not a named list")
    index = dict(zip(index_list.attrs["names"], index_list))
    variables = index.get("variables")
    if variables is None:
        raise RFormatError(f"{rdx}: index has no 'variables' entry (keys: {sorted(index)})")
    compressed = index.get("compressed")
    compressed = int(compressed[0]) if compressed else 1
    blob = rdb.read_bytes()
    out = {}
    for name, pos in zip(variables.attrs["names"], variables):
        offset, length = int(pos[0]), int(pos[1])
        where = f"{rdb}[{name}]"
        if offset + length > len(blob):
            raise RFormatError(f"{where}: entry at {offset}+{length} runs past the end ({len(blob)} bytes)")
        out[name] = unserialize(_decompress_rdb_chunk(blob[offset:offset + length], compressed, where), where)
    return out
