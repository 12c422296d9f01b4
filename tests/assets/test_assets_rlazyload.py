"""The R lazy-load reader: hand-built serializations, and the real janeaustenr database."""

import gzip
import shutil
import struct
import zlib

import pytest

from linalign import assets
from linalign.assets import rlazyload


def _i(*vals):
    return struct.pack(f">{len(vals)}i", *vals)


def _char(s, utf8=True):
    b = s.encode()
    return _i(9 | ((1 << 3) << 12 if utf8 else 0), len(b)) + b


def _strsxp(items, names=None):
    flags = 16 | ((1 << 9) if names else 0)
    out = _i(flags, len(items)) + b"".join(_i(9, -1) if s is None else _char(s) for s in items)
    if names:
        # attributes: pairlist (tag "names" -> STRSXP), then NILVALUE.
        out += _i(2 | (1 << 10)) + _i(1) + _char("names") + _strsxp(names) + _i(254)
    return out


HEADER = b"X\n" + _i(3, 0x040200, 0x030500, 5) + b"UTF-8"


def test_unserialize_character_vector_with_na_and_names():
    obj = rlazyload.unserialize(HEADER + _strsxp(["a", None, "ünï"], names=["x", "y", "z"]))
    assert list(obj) == ["a", None, "ünï"]
    assert list(obj.attrs["names"]) == ["x", "y", "z"]


def test_unserialize_numbers_and_lists():
    body = _i(19, 2) + _i(13, 3, 1, -(2**31), 7) + _i(14, 2) + struct.pack(">2d", 0.5, -2.0)
    obj = rlazyload.unserialize(HEADER + body)
    assert list(obj[0]) == [1, None, 7] and list(obj[1]) == [0.5, -2.0]


def test_unserialize_rejects_garbage():
    with pytest.raises(rlazyload.RFormatError, match="not XDR"):
        rlazyload.unserialize(b"RDX2\n")
    with pytest.raises(rlazyload.RFormatError, match="ends early"):
        rlazyload.unserialize(HEADER + _i(16, 5))
    with pytest.raises(rlazyload.RFormatError, match="unsupported R object type 21"):
        rlazyload.unserialize(HEADER + _i(21))


def test_read_lazyload_roundtrip(tmp_path):
    """A database laid out as R writes it: gzip'd index, zlib'd entries with length prefixes."""
    entries, blob = {}, b""
    for name, vec in {"first": ["one", "two"], "second": ["three"]}.items():
        ser = HEADER + _strsxp(vec)
        chunk = struct.pack(">I", len(ser)) + zlib.compress(ser)
        entries[name] = (len(blob), len(chunk))
        blob += chunk
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    # index: list(variables = list(first = c(off, len), ...), references = list(), compressed = TRUE)
    variables = _i(19 | (1 << 9), 2) + b"".join(_i(13, 2, *v) for v in entries.values())
    variables += _i(2 | (1 << 10)) + _i(1) + _char("names") + _strsxp(list(entries)) + _i(254)
    index = _i(19 | (1 << 9), 3) + variables + _i(19, 0) + _i(10, 1, 1)
    index += _i(2 | (1 << 10)) + _i(1) + _char("names") + _strsxp(["variables", "references", "compressed"])
    index += _i(254)
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(HEADER + index))
    out = rlazyload.read_lazyload(tmp_path)
    assert {k: list(v) for k, v in out.items()} == {"first": ["one", "two"], "second": ["three"]}
    (tmp_path / "Rdata.rdb").write_bytes(blob[:-3])
    with pytest.raises(rlazyload.RFormatError, match="runs past the end"):
        rlazyload.read_lazyload(tmp_path)


def test_real_janeaustenr():
    if shutil.which("apt-get") is None and not assets.is_cached("austen"):
        pytest.skip("austen needs apt (Debian/Ubuntu), not available here")
    try:
        root = assets.path("austen")
    except assets.AssetError as e:
        pytest.skip(f"austen could not be fetched here: {str(e).splitlines()[0]}")
    books = rlazyload.read_lazyload(root / "data")
    assert sorted(books) == ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                             "sensesensibility"]
    assert sum(len(v) for v in books.values()) == 73_422  # rows of janeaustenr::austen_books()
    assert books["prideprejudice"][:4] == ["PRIDE AND PREJUDICE", "", "By Jane Austen", ""]
    assert all(isinstance(s, str) for v in books.values() for s in v)
