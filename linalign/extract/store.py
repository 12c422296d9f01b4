"""On-disk embedding store: numbered ``.npy`` shards plus a JSON manifest.

Layout of a store directory::

    manifest.json
    shard-00000.npy            pooled: [rows, dim]; per-token: [tokens, dim] (rows concatenated)
    shard-00000.lengths.npy    per-token only: [rows] int32 tokens per row
    shard-00000.ids.npy        per-token only: [tokens] int32 token ids
    shard-00000.offsets.npy    per-token only: [tokens, 2] int32 character offsets (start, end)
    shard-00001.npy
    ...

``manifest.json`` holds ``format_version``, the provenance fields given to ``StoreWriter``
(``model``, ``model_fingerprint``, ``config_hash``, ``tokenizer``, ``pooling``, ...),
``per_token``, ``dtype``, ``dim``, ``num_rows`` (rows written so far), ``text_fingerprint``
(sha256 of the texts in order, see ``text_fingerprint``), ``shards`` (one entry per shard with
its files, row count and sha256) and ``complete``.

Crash safety: every file is written under a temporary name and renamed into place, and the
manifest is rewritten (also atomically) after each shard. A shard file that is not listed in the
manifest does not exist as far as readers are concerned, so an interrupted writer always leaves a
consistent prefix of rows and a new ``StoreWriter`` on the same directory resumes after it.

A store may have several parts, one per process of a multi-process extraction
(``linalign.extract.parts``): then ``manifest.json`` lists the parts instead of shards, each part
is a one-part store in a subdirectory of the same name, and the rows are the parts' rows in
order. Single-process extraction writes one part: the store directory itself. ``open_store``
reads both, and the layout of earlier versions (a ``parts.json`` index beside the part
directories). Every file name in a manifest is a plain name inside the store directory: no
absolute paths, no ``..``, no path separators; a manifest that names anything else is refused
before anything is read or deleted.

Plain ``.npy`` files were chosen over safetensors/zarr because readers can memory-map them with
numpy alone, and one file per shard makes the atomic-rename story trivial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from linalign.assets.store import sha256_file  # noqa: F401  (the package's one file digest)
from linalign.atomic import atomic_file, atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LEGACY_PARTS_INDEX = "parts.json"  # earlier versions' index of a multi-process store
SUPPORTED_DTYPES = ("float32", "float16", "float64")
TOKEN_ARRAYS = ("lengths", "ids", "offsets")

# Provenance fields that must agree for a writer to resume an existing store.
_IDENTITY_KEYS = ("model", "model_fingerprint", "config_hash", "tokenizer", "pooling",
                  "per_token", "dtype", "dim", "text_fingerprint", "max_length", "layer",
                  "total_rows", "add_special_tokens", "truncation")

PathLike = Union[str, os.PathLike]


class StoreError(ValueError):
    """An embedding store is missing, corrupt, or does not match what the caller expects."""


def text_fingerprint(texts: Iterable[str]) -> str:
    """sha256 over the texts in order, each length-prefixed so boundaries are unambiguous.

    Args:
      texts: the texts, in store row order.

    Returns:
      hex digest.
    """
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _atomic_save_npy(path: pathlib.Path, arr: np.ndarray) -> str:
    """Writes ``arr`` to ``path`` atomically; returns its sha256."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
    return digest



@dataclasses.dataclass
class TokenRows:
    """Per-token states for a run of rows, concatenated along the token axis.

    Attributes:
      states_nd: [num_tokens, dim] hidden states of every real token of every row.
      lengths_b: [rows] int32 tokens per row (rows are contiguous in ``states_nd``).
      ids_n: [num_tokens] int32 token ids.
      offsets_n2: [num_tokens, 2] int32 (start, end) character offsets into each row's text.
    """

    states_nd: np.ndarray
    lengths_b: np.ndarray
    ids_n: np.ndarray
    offsets_n2: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths_b.shape[0])

    def row_starts(self) -> np.ndarray:
        """[rows + 1] token index where each row starts (last entry: total tokens)."""
        return np.concatenate([[0], np.cumsum(self.lengths_b, dtype=np.int64)])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(states [len, dim], ids [len], offsets [len, 2]) of row ``i``."""
        s = self.row_starts()
        a, b = int(s[i]), int(s[i + 1])
        return self.states_nd[a:b], self.ids_n[a:b], self.offsets_n2[a:b]

    @staticmethod
    def concat(parts: Sequence["TokenRows"]) -> "TokenRows":
        return TokenRows(*(np.concatenate([getattr(p, f.name) for p in parts])
                           for f in dataclasses.fields(TokenRows)))

    def slice_rows(self, a: int, b: int) -> "TokenRows":
        s = self.row_starts()
        ta, tb = int(s[a]), int(s[b])
        return TokenRows(self.states_nd[ta:tb], self.lengths_b[a:b], self.ids_n[ta:tb],
                         self.offsets_n2[ta:tb])


class StoreWriter:
    """Appends shards to an embedding store; resumes a matching partial store.

    Args:
      path: store directory (created if missing).
      per_token: per-token store (``append`` takes TokenRows) or pooled ([rows, dim] arrays).
      dtype: storage dtype, one of SUPPORTED_DTYPES.
      dim: hidden size; every appended array must have it.
      overwrite: discard any existing store at ``path``. Otherwise a store with the same
        identity (model, texts, pooling, ...) is resumed and a different one raises.
      **meta: provenance written to the manifest (model, model_fingerprint, config_hash,
        tokenizer, pooling, text_fingerprint, total_rows, ...); JSON-serialisable.

    Attributes:
      num_rows: rows already in the store (after resuming, where the caller should restart).
      complete: True once ``finalize`` ran (a complete matching store needs no more work).
    """

    def __init__(self, path: PathLike, *, per_token: bool, dtype: str, dim: int,
                 overwrite: bool = False, **meta: Any):
        if dtype not in SUPPORTED_DTYPES:
            raise StoreError(f"store dtype {dtype!r} not supported; use one of {SUPPORTED_DTYPES}")
        if int(dim) <= 0:
            raise StoreError(f"store dim must be positive, got {dim}")
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = dict(meta)
        manifest.update(format_version=FORMAT_VERSION, per_token=bool(per_token), dtype=dtype,
                        dim=int(dim), num_rows=0, shards=[], complete=False)
        json.dumps(manifest)  # fail now, not after the first shard, on unserialisable meta
        mpath = self.path / MANIFEST
        if overwrite:
            _clear_store_files(self.path)
        elif mpath.exists() or (self.path / LEGACY_PARTS_INDEX).exists():
            old = _read_manifest(self.path)
            if "parts" in old:
                raise StoreError(f"{self.path} holds a store of {len(old['parts'])} parts; a writer "
                                 "appends to a one-part store (pass overwrite=True or choose "
                                 "another directory)")
            diffs = {k: (old.get(k), manifest.get(k)) for k in _IDENTITY_KEYS
                     if old.get(k) != manifest.get(k)}
            if diffs:
                raise StoreError(
                    f"{self.path} already holds a different store (differs in "
                    + ", ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in diffs.items())
                    + "); pass overwrite=True or choose another directory")
            # Verify what is there before building on it; a corrupt shard raises.
            EmbeddingStore(self.path, old).verify()
            manifest = old
        self.manifest = manifest
        # Shards beyond the manifest are leftovers of an interrupted write; remove them so
        # a reader never mistakes them for data.
        listed = {f for s in manifest["shards"] for f in _shard_files(s)}
        for p in self.path.glob("shard-*"):
            if p.name not in listed and p.is_file():
                p.unlink()
        atomic_write_json(mpath, self.manifest)

    @property
    def num_rows(self) -> int:
        return int(self.manifest["num_rows"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def append(self, data: Union[np.ndarray, TokenRows]) -> None:
        """Writes one shard and commits it to the manifest.

        Args:
          data: pooled store: [rows, dim] array; per-token store: TokenRows.

        Raises:
          StoreError: on wrong type, shape, non-finite values (naming the row) or a completed store.
        """
        m = self.manifest
        if m["complete"]:
            raise StoreError(f"{self.path} is complete; cannot append")
        dt = np.dtype(m["dtype"])
        if m["per_token"]:
            if not isinstance(data, TokenRows):
                raise StoreError("per-token store expects TokenRows")
            states = np.asarray(data.states_nd)
            lengths = np.asarray(data.lengths_b, dtype=np.int32)
            ids = np.asarray(data.ids_n, dtype=np.int32)
            offsets = np.asarray(data.offsets_n2, dtype=np.int32)
            n_tok = int(lengths.sum())
            if lengths.ndim != 1 or (lengths < 0).any():
                raise StoreError("lengths must be a 1-D array of non-negative counts")
            if ids.shape != (n_tok,) or offsets.shape != (n_tok, 2):
                raise StoreError(f"ids {ids.shape} / offsets {offsets.shape} do not match "
                                 f"{n_tok} tokens from lengths")
            rows = int(lengths.shape[0])
            row_of_token = np.repeat(np.arange(rows), lengths)
        else:
            if isinstance(data, TokenRows):
                raise StoreError("pooled store expects a [rows, dim] array, got TokenRows")
            states = np.asarray(data)
            rows = int(states.shape[0]) if states.ndim == 2 else -1
            row_of_token = None
        if states.ndim != 2 or states.shape[1] != m["dim"]:
            raise StoreError(f"expected states of shape [n, {m['dim']}], got {states.shape}")
        if rows == 0:
            raise StoreError("refusing to write an empty shard")
        if row_of_token is not None and states.shape[0] != row_of_token.shape[0]:
            raise StoreError(f"{states.shape[0]} token states but lengths sum to "
                             f"{row_of_token.shape[0]}")
        bad = ~np.isfinite(states).all(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            row = first if row_of_token is None else int(row_of_token[first])
            raise StoreError(f"non-finite values in row {m['num_rows'] + row} of the store")
        idx = len(m["shards"])
        base = f"shard-{idx:05d}"
        entry: dict[str, Any] = {"file": base + ".npy", "rows": rows}
        entry["sha256"] = _atomic_save_npy(self.path / entry["file"], states.astype(dt, copy=False))
        if m["per_token"]:
            entry["tokens"] = int(states.shape[0])
            entry["extra"] = {}
            for name, arr in (("lengths", lengths), ("ids", ids), ("offsets", offsets)):
                fname = f"{base}.{name}.npy"
                entry["extra"][name] = {"file": fname,
                                        "sha256": _atomic_save_npy(self.path / fname, arr)}
        m["shards"].append(entry)
        m["num_rows"] += rows
        atomic_write_json(self.path / MANIFEST, m)

    def finalize(self) -> "EmbeddingStore":
        """Marks the store complete (checking ``total_rows`` if given) and opens it."""
        m = self.manifest
        total = m.get("total_rows")
        if total is not None and int(total) != m["num_rows"]:
            raise StoreError(f"store has {m['num_rows']} rows but total_rows={total}")
        m["complete"] = True
        atomic_write_json(self.path / MANIFEST, m)
        return EmbeddingStore(self.path, m)


def _shard_files(entry: dict) -> list[str]:
    return [entry["file"]] + [e["file"] for e in entry.get("extra", {}).values()]


_PART_DIR = re.compile(r"^part-\d{5}-of-\d{5}$")


def part_name(index: int, count: int) -> str:
    """Directory name of part ``index`` of ``count`` inside a store."""
    return f"part-{index:05d}-of-{count:05d}"


def _clear_store_files(path: pathlib.Path) -> None:
    """Removes what a store writes directly inside ``path``, by name pattern only.

    The old manifest is deliberately not consulted: a manifest can name anything, and
    overwriting a store must never delete a file outside it.
    """
    for p in path.iterdir():
        if p.is_symlink():
            if p.name.startswith("shard-") or _PART_DIR.match(p.name):
                p.unlink()
        elif p.is_file() and (p.name.startswith("shard-") or p.name == LEGACY_PARTS_INDEX):
            p.unlink()
        elif p.is_dir() and _PART_DIR.match(p.name):
            shutil.rmtree(p)


def check_file_name(name: Any, where: PathLike) -> str:
    """``name`` if it is a plain file name inside a store directory, else StoreError.

    Refused: non-strings, empty names, ``.``/``..``, absolute paths, and names containing a
    path separator or NUL, so nothing a manifest lists can point outside its store.
    """
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.path.isabs(name)):
        raise StoreError(f"{where}: manifest entry {name!r} is not a file name inside the store "
                         "(absolute paths, '..' and path separators are refused)")
    return name


def _legacy_parts_manifest(path: pathlib.Path) -> dict:
    """The manifest equivalent of an earlier version's ``parts.json`` index."""
    ipath = path / LEGACY_PARTS_INDEX
    try:
        idx = json.loads(ipath.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{ipath} is not valid JSON: {e}") from None
    if idx.get("version") != 1 or not isinstance(idx.get("parts"), list):
        raise StoreError(f"{ipath}: unsupported parts index (version {idx.get('version')!r})")
    m = {k: v for k, v in idx.items() if k not in ("version", "corpus_fingerprint")}
    m.update(format_version=FORMAT_VERSION, complete=True,
             text_fingerprint=idx.get("corpus_fingerprint"))
    return m


def _read_manifest(path: pathlib.Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.exists():
        if (path / LEGACY_PARTS_INDEX).exists():
            m = _legacy_parts_manifest(path)
        elif path.is_dir() and any(_PART_DIR.match(p.name) for p in path.iterdir()):
            raise StoreError(f"{path} is not an embedding store: {MANIFEST} is missing, but it "
                             "holds part directories: the multi-process extraction did not finish "
                             "on every process; rerun it to complete the store")
        else:
            raise StoreError(f"{path} is not an embedding store: {MANIFEST} is missing")
    else:
        try:
            m = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{mpath}: format_version {m.get('format_version')!r} not supported "
                         f"(expected {FORMAT_VERSION})")
    listing = "parts" if "parts" in m else "shards"
    for k in ("per_token", "dtype", "dim", "num_rows", listing, "complete"):
        if k not in m:
            raise StoreError(f"{mpath} lacks required field {k!r}")
    if listing == "parts":
        for p in m["parts"]:
            check_file_name(p.get("name") if isinstance(p, dict) else p, mpath)
    else:
        for s in m["shards"]:
            for f in _shard_files(s):
                check_file_name(f, mpath)
    return m


class EmbeddingStore:
    """Read access to a store: one part (written by StoreWriter) or several (``join_parts``).

    Rows are the parts' rows in order; shards are numbered across all parts. Each shard is
    checked against its manifest (existence, shape, dtype, sha256) when it is read;
    ``verify()`` checks all of them up front.

    Attributes:
      path: the store directory.
      manifest: the store's own manifest (for several parts: the one listing them).
      parts: the parts, as one-part EmbeddingStores (``[self]`` for a one-part store).
    """

    def __init__(self, path: PathLike, manifest: Optional[dict] = None):
        self.path = pathlib.Path(path)
        self.manifest = manifest if manifest is not None else _read_manifest(self.path)
        m = self.manifest
        if "parts" in m:
            self.parts = []
            for p in m["parts"]:
                name = p["name"] if isinstance(p, dict) else p
                part = EmbeddingStore(self.path / check_file_name(name, self.path / MANIFEST))
                if "parts" in part.manifest:
                    raise StoreError(f"{part.path}: a part may not itself have parts")
                for k in ("dim", "dtype", "per_token"):
                    if part.manifest[k] != m[k]:
                        raise StoreError(f"{self.path}: part {name} has {k}={part.manifest[k]!r}, "
                                         f"the store says {m[k]!r}")
                self.parts.append(part)
        else:
            self.parts = [self]
        self._shards = [(part.path, s) for part in self.parts for s in part.manifest["shards"]]
        rows = sum(int(s["rows"]) for _, s in self._shards)
        if rows != m["num_rows"]:
            raise StoreError(f"{self.path}: manifest num_rows={m['num_rows']} but "
                             f"shards hold {rows} rows")
        for d, s in self._shards:
            for f in _shard_files(s):
                if not (d / f).exists():
                    raise StoreError(f"{d}: shard file {f} listed in the manifest is missing")

    @property
    def num_rows(self) -> int:
        return int(self.manifest["num_rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def per_token(self) -> bool:
        return bool(self.manifest["per_token"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"]) and all(p.manifest["complete"] for p in self.parts)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def shard_rows(self) -> np.ndarray:
        """[num_shards] int64 rows of each shard, in row order."""
        return np.asarray([int(s["rows"]) for _, s in self._shards], np.int64)

    def shard_digest(self) -> str:
        """sha256 over every shard's recorded sha256, in order: the identity of the contents."""
        return hashlib.sha256("".join(s["sha256"] for _, s in self._shards).encode()).hexdigest()

    def __len__(self) -> int:
        return self.num_rows

    def _load(self, d: pathlib.Path, fname: str, sha: str, check: bool = True,
              mmap: bool = False) -> np.ndarray:
        p = d / fname
        if check and sha256_file(p) != sha:
            raise StoreError(f"{d}: shard file {fname} is corrupt (sha256 mismatch)")
        try:
            return np.load(p, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as e:
            raise StoreError(f"{d}: shard file {fname} cannot be read: {e}") from None

    def read_shard(self, i: int, *, check: bool = True, mmap: bool = False
                   ) -> Union[np.ndarray, TokenRows]:
        """Loads and checks shard ``i``: [rows, dim] array or TokenRows.

        Args:
          i: shard index over all parts.
          check: verify the sha256 (skip only for shards verified already).
          mmap: memory-map the states instead of reading them.
        """
        d, s = self._shards[i]
        states = self._load(d, s["file"], s["sha256"], check, mmap)
        want_rows = s["tokens"] if self.per_token else s["rows"]
        if states.shape != (want_rows, self.dim) or states.dtype != np.dtype(self.manifest["dtype"]):
            raise StoreError(f"{d}: shard file {s['file']} has shape {states.shape} "
                             f"{states.dtype}, manifest says ({want_rows}, {self.dim}) "
                             f"{self.manifest['dtype']}")
        if not self.per_token:
            return states
        ex = {k: self._load(d, e["file"], e["sha256"], check) for k, e in s["extra"].items()}
        if ex["lengths"].shape != (s["rows"],) or int(ex["lengths"].sum()) != s["tokens"]:
            raise StoreError(f"{d}: {s['extra']['lengths']['file']} does not match the manifest")
        return TokenRows(states, ex["lengths"], ex["ids"], ex["offsets"])

    def verify(self) -> None:
        """Checks every shard's sha256 and shape; raises StoreError naming the first bad file."""
        for i in range(self.num_shards):
            self.read_shard(i)

    def iter_batches(self, batch_size: int) -> Iterator[Union[np.ndarray, TokenRows]]:
        """Yields consecutive batches of exactly ``batch_size`` rows (the last may be short).

        Args:
          batch_size: rows per batch, independent of the shard size.

        Yields:
          pooled stores: [b, dim] arrays; per-token stores: TokenRows of b rows.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        pending: list = []
        n_pending = 0
        for i in range(self.num_shards):
            shard = self.read_shard(i)
            pending.append(shard)
            n_pending += len(shard)
            while n_pending >= batch_size:
                buf = self._concat(pending)
                yield self._slice(buf, 0, batch_size)
                rest = self._slice(buf, batch_size, len(buf))
                pending, n_pending = ([rest], len(rest)) if len(rest) else ([], 0)
        if n_pending:
            yield self._concat(pending)

    def read_all(self) -> Union[np.ndarray, TokenRows]:
        """All rows: [num_rows, dim] array, or TokenRows for a per-token store."""
        shards = [self.read_shard(i) for i in range(self.num_shards)]
        if not shards:
            if self.per_token:
                return TokenRows(np.zeros((0, self.dim), self.manifest["dtype"]),
                                 np.zeros((0,), np.int32), np.zeros((0,), np.int32),
                                 np.zeros((0, 2), np.int32))
            return np.zeros((0, self.dim), self.manifest["dtype"])
        return self._concat(shards)

    def _concat(self, parts):
        if len(parts) == 1:
            return parts[0]
        return TokenRows.concat(parts) if self.per_token else np.concatenate(parts)

    def _slice(self, buf, a, b):
        return buf.slice_rows(a, b) if self.per_token else buf[a:b]


def _unjoined_manifest(path: pathlib.Path) -> Optional[dict]:
    """An in-memory manifest over the parts written so far of a store still being extracted
    (several processes, no store manifest yet); None when ``path`` holds no part directories."""
    if not path.is_dir():
        return None
    names = sorted(p.name for p in path.iterdir() if _PART_DIR.match(p.name)
                   and (p / MANIFEST).exists())
    if not names:
        return None
    counts = {n.rsplit("-of-", 1)[1] for n in names}
    if len(counts) != 1:
        raise StoreError(f"{path} holds parts of jobs of different sizes: {names}")
    parts = [_read_manifest(path / n) for n in names]
    first = parts[0]
    m = {k: first.get(k) for k in _PART_KEYS}
    m.update(format_version=FORMAT_VERSION, complete=False,
             num_rows=sum(int(x["num_rows"]) for x in parts),
             parts=[{"name": n} for n in names],
             text_fingerprint=(first.get("part") or {}).get("corpus_fingerprint"))
    return m


def open_store(path: PathLike, *, require_complete: bool = True, verify: bool = False) -> EmbeddingStore:
    """Opens an embedding store: one part, several parts, or the earlier ``parts.json`` layout.

    Args:
      path: store directory.
      require_complete: raise if the writer never finished (an interrupted extraction). With
        False, a multi-process store still being written (no store manifest yet) opens as the
        rows its parts have committed so far.
      verify: check every shard's sha256 now rather than as each is read.

    Raises:
      StoreError: missing manifest or shard, corrupt shard, incomplete store.
    """
    p = pathlib.Path(path)
    if not require_complete and not (p / MANIFEST).exists() and not (p / LEGACY_PARTS_INDEX).exists():
        m = _unjoined_manifest(p)
        store = EmbeddingStore(p, m) if m is not None else EmbeddingStore(p)
    else:
        store = EmbeddingStore(p)
    if require_complete and not store.complete:
        if len(store.parts) > 1:
            raise StoreError(f"{path}: a part is incomplete; rerun the extraction to resume it")
        raise StoreError(f"{path} is incomplete ({store.num_rows} of "
                         f"{store.manifest.get('total_rows', '?')} rows written); rerun the "
                         "extraction to resume it, or pass require_complete=False")
    if verify:
        store.verify()
    return store


# Fields every part of one store must agree on (rows of different models, widths, poolings or
# layers cannot be one sequence of rows).
_PART_KEYS = ("model", "model_fingerprint", "config_hash", "tokenizer", "pooling", "per_token",
              "dtype", "dim", "max_length", "layer", "add_special_tokens", "truncation")


def join_parts(path: PathLike, names: Sequence[str], **meta: Any) -> EmbeddingStore:
    """Makes the one-part stores ``path/<name>`` one store of several parts, in that order.

    Everything is checked before the store's manifest is written (atomically, last), so a
    failure leaves no store at ``path``, never a half-joined one. When the parts carry the
    ``part`` record of a multi-process extraction (row range, corpus size and fingerprint),
    the ranges must tile the corpus.

    Args:
      path: the store directory holding the part directories.
      names: part directory names (plain names inside ``path``).
      **meta: more provenance for the manifest (e.g. corpus).

    Returns:
      The joined EmbeddingStore.

    Raises:
      StoreError: a part missing, incomplete or corrupt; parts of different widths, models,
        poolings, layers or dtypes (naming the part and the fields); row ranges that do not
        tile the corpus.
    """
    root = pathlib.Path(path)
    if not names:
        raise StoreError(f"{root}: no parts to join")
    parts, first, rows = [], None, 0
    for name in names:
        check_file_name(name, root)
        try:
            st = open_store(root / name)
        except StoreError as e:
            raise StoreError(f"store {root}: part {name}: {e}") from None
        if "parts" in st.manifest:
            raise StoreError(f"store {root}: part {name} itself has parts")
        m = st.manifest
        key = {k: m.get(k) for k in _PART_KEYS}
        info = m.get("part") or {}
        if info:
            key["corpus_fingerprint"] = info.get("corpus_fingerprint")
            key["corpus_rows"] = info.get("corpus_rows")
            lo, hi = (info.get("rows") or [None, None])
            if lo != rows or hi is None or hi - lo != st.num_rows:
                raise StoreError(f"store {root}: part {name} holds rows {info.get('rows')} "
                                 f"({st.num_rows} stored); expected it to start at row {rows}")
        if first is None:
            first = key
        elif key != first:
            diff = ", ".join(f"{k}: {key[k]!r} != {first[k]!r}" for k in key if key[k] != first[k])
            raise StoreError(f"store {root}: part {name} differs from part {names[0]} in {diff}; "
                             "the parts of one store must come from the same model and settings")
        parts.append({"name": name, "rows": [rows, rows + st.num_rows]})
        rows += st.num_rows
    corpus_rows = first.pop("corpus_rows", None)
    corpus_fp = first.pop("corpus_fingerprint", None)
    if corpus_rows is not None and rows != corpus_rows:
        raise StoreError(f"store {root}: the parts hold {rows} rows, the corpus has {corpus_rows}")
    manifest = {**meta, **first, "format_version": FORMAT_VERSION, "num_rows": rows,
                "total_rows": rows, "parts": parts, "complete": True,
                "text_fingerprint": corpus_fp}
    json.dumps(manifest)
    store = EmbeddingStore(root, manifest)  # checks again exactly what will be written
    atomic_write_json(root / MANIFEST, manifest)
    return store
