"""Row-aligned embedding inputs for fitting: embedding stores, plain .npy files, and per-token
stores of two models paired token by token.

An embedding store is what ``linalign.extract`` writes (one part, or one part per process of
``python -m linalign.distributed extract``), opened through ``linalign.extract.store.open_store``.
A plain ``.npy`` file holds one [n, d] float array and is memory-mapped. Two per-token stores
of the same texts become two sources of paired rows with ``open_token_pairs`` (the pairing
rule is ``linalign.eval.pairing.pair_offsets``).

Every source reads any row range (``read(lo, hi)``), so a fit on several processes lets each
read its own contiguous rows, and batches of both sources of a pair cover the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Callable, Iterator, Optional

import numpy as np

from linalign.align.validate import AlignInputError


@dataclasses.dataclass
class EmbeddingSource:
    """[num_rows, dim] embeddings readable by row range and in consecutive batches.

    Attributes:
      path: where they came from.
      num_rows, dim: shape.
      model, pooling: provenance from the store manifest ("" for .npy files; "token" for
        paired per-token rows).
      text_fingerprint: sha256 of the texts in row order (stores), or None when unknown.
      data_fingerprint: identity of the array contents (text fingerprint, else file sha256).
      model_fingerprint: the checkpoint's fingerprint from the store manifest, or "".
      layer: hidden-state index from the store manifest, or None.
      row_tokens: token pairs only: [num_rows] global token index of each row in its store.
      token_ids: token pairs only: [tokens] token id of every token of the store.
    """

    path: pathlib.Path
    num_rows: int
    dim: int
    model: str
    pooling: str
    text_fingerprint: Optional[str]
    data_fingerprint: str
    _store: object = None
    _array: Optional[np.ndarray] = None
    _read: Optional[Callable[[int, int], np.ndarray]] = None
    model_fingerprint: str = ""
    layer: Optional[int] = None
    row_tokens: Optional[np.ndarray] = None
    token_ids: Optional[np.ndarray] = None

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) as a float32 [hi - lo, dim] array."""
        if not 0 <= lo <= hi <= self.num_rows:
            raise IndexError(f"rows [{lo}, {hi}) outside [0, {self.num_rows}) of {self.path}")
        if self._array is not None:
            return np.asarray(self._array[lo:hi], dtype=np.float32)
        return self._read(lo, hi)

    def iter_batches(self, batch_size: int, lo: int = 0,
                     hi: Optional[int] = None) -> Iterator[np.ndarray]:
        """Consecutive [<= batch_size, dim] batches covering rows [lo, hi) (default: all) in order."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        hi = self.num_rows if hi is None else hi
        for i in range(lo, hi, batch_size):
            yield self.read(i, min(hi, i + batch_size))


class _ShardReader:
    """Row ranges of a pooled store, one shard in memory at a time (checked when loaded)."""

    def __init__(self, store):
        self.store = store
        self.starts = np.concatenate([[0], np.cumsum(store.shard_rows())]).astype(np.int64)
        self.cached: tuple[int, Optional[np.ndarray]] = (-1, None)

    def _shard(self, i: int) -> np.ndarray:
        if self.cached[0] != i:
            self.cached = (i, self.store.read_shard(i))
        return self.cached[1]

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        parts = []
        i = int(np.searchsorted(self.starts, lo, side="right") - 1)
        while lo < hi:
            s0, s1 = int(self.starts[i]), int(self.starts[i + 1])
            take = min(hi, s1)
            parts.append(self._shard(i)[lo - s0:take - s0])
            lo, i = take, i + 1
        out = np.concatenate(parts) if parts else np.zeros((0, self.store.dim))
        return out.astype(np.float32, copy=False)


def _from_store(p: pathlib.Path, store) -> EmbeddingSource:
    m = store.manifest
    tf = m.get("text_fingerprint")
    return EmbeddingSource(p, store.num_rows, store.dim, str(m.get("model", "")),
                           str(m.get("pooling", "")), tf, tf or "sha256:" + store.shard_digest(),
                           _store=store, _read=_ShardReader(store),
                           model_fingerprint=str(m.get("model_fingerprint", "")),
                           layer=m.get("layer"))


def open_embeddings(path) -> EmbeddingSource:
    """Opens an embedding store directory (any number of parts) or a .npy file.

    Raises:
      FileNotFoundError: nothing at ``path``.
      AlignInputError: unsupported file, per-token store, wrong rank or dtype.
      StoreError: a store that is incomplete, corrupt, or whose parts do not match.
    """
    from linalign.extract.store import open_store, sha256_file

    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no embeddings at {p}")
    if p.is_dir():
        store = open_store(p)
        if store.per_token:
            raise AlignInputError(
                f"{p} is a per-token store; fitting needs one row per example: pair the tokens "
                "of two per-token stores with linalign.align.sources.open_token_pairs (or "
                "--pair_tokens), or extract with pooling")
        return _from_store(p, store)
    if p.suffix != ".npy":
        raise AlignInputError(f"{p}: expected an embedding store directory or a .npy file")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise AlignInputError(f"{p}: cannot read as a numeric .npy array: {e}") from None
    if arr.ndim != 2:
        raise AlignInputError(f"{p}: expected a rank-2 [n, d] array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise AlignInputError(f"{p}: embeddings must be floating point, got {arr.dtype}")
    return EmbeddingSource(p, int(arr.shape[0]), int(arr.shape[1]), p.stem, "", None,
                           "sha256:" + sha256_file(p), _array=arr)


# --------------------------------------------------------------------------- per-token pairs
class _TokenIndex:
    """Where every token of a per-token store lives, and which text each indexed row is.

    Attributes:
      text_ids: [texts] global text (row) index of each indexed row, ascending.
      starts: [texts + 1] first global token of each indexed row.
      offsets: [tokens, 2] character offsets of every token.
    """

    def __init__(self, store):
        self.store = store
        lengths, offsets, ids, shard_of, row_in_shard, text_ids = [], [], [], [], [], []
        shard = 0
        for part, (lo, _) in zip(store.parts, _part_ranges(store)):
            row = lo
            for _ in range(part.num_shards):
                tr = store.read_shard(shard, mmap=True)  # sha256 checked here, once
                n = len(tr.lengths_b)
                lengths.append(np.asarray(tr.lengths_b, np.int64))
                offsets.append(np.asarray(tr.offsets_n2, np.int64))
                ids.append(np.asarray(tr.ids_n, np.int32))
                n_tok = int(tr.lengths_b.sum())
                shard_of.append(np.full(n_tok, shard, np.int32))
                row_in_shard.append(np.arange(n_tok, dtype=np.int64))
                text_ids.append(np.arange(row, row + n, dtype=np.int64))
                row += n
                shard += 1
        cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt)  # noqa: E731
        self.offsets = cat(offsets, (0, 2), np.int64)
        self.ids = cat(ids, (0,), np.int32)
        self.shard_of = cat(shard_of, (0,), np.int32)
        self.row_in_shard = cat(row_in_shard, (0,), np.int64)
        self.text_ids = cat(text_ids, (0,), np.int64)
        self.starts = np.concatenate([[0], np.cumsum(cat(lengths, (0,), np.int64))]).astype(np.int64)
        self._mm: dict[int, np.ndarray] = {}

    def gather(self, tokens: np.ndarray) -> np.ndarray:
        """[len(tokens), dim] float32 states of the given global token indices."""
        out = np.empty((len(tokens), self.store.dim), np.float32)
        shards = self.shard_of[tokens]
        for s in np.unique(shards):
            if s not in self._mm:
                self._mm[s] = self.store.read_shard(int(s), check=False, mmap=True).states_nd
            sel = shards == s
            out[sel] = self._mm[s][self.row_in_shard[tokens[sel]]]
        return out


def pair_token_rows(source: _TokenIndex, target: _TokenIndex, texts: np.ndarray,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global token indices of every (source, target) pair of the given texts, target order.

    Args:
      source, target: token indices of the two stores.
      texts: [T] ascending global text indices present in both.

    Returns:
      (source_tokens [N], target_tokens [N], text_of_row [N]) int64.
    """
    from linalign.eval.pairing import pair_offsets

    ls = np.searchsorted(source.text_ids, texts)
    lt = np.searchsorted(target.text_ids, texts)
    src_idx, tgt_idx, text_of = [], [], []
    it = range(len(texts))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="pair tokens", unit="text", mininterval=5)
    for k in it:
        a0, a1 = target.starts[lt[k]], target.starts[lt[k] + 1]
        b0, b1 = source.starts[ls[k]], source.starts[ls[k] + 1]
        pairs = pair_offsets(target.offsets[a0:a1], source.offsets[b0:b1])
        ok = np.flatnonzero(pairs >= 0)
        tgt_idx.append(a0 + ok)
        src_idx.append(b0 + pairs[ok])
        text_of.append(np.full(len(ok), texts[k], np.int64))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(src_idx), cat(tgt_idx), cat(text_of)


def open_token_pairs(source_path, target_path, *, max_texts: Optional[int] = None,
                     allow_incomplete: bool = False, progress: bool = True
                     ) -> tuple[EmbeddingSource, EmbeddingSource, np.ndarray]:
    """Two per-token stores of the same texts as two sources of paired rows.

    Each target token is paired with a source token by character offsets
    (``linalign.eval.pairing.pair_offsets``: the first source token reaching at least as far
    into the text); unpaired tokens (BOS, empty spans) are dropped. Row r of both sources is
    pair r; rows follow the texts in order, so a row's global index is the same whichever
    process reads it.

    Args:
      source_path, target_path: per-token stores (any number of parts each).
      max_texts: pair only the first ``max_texts`` texts (of those both stores hold).
      allow_incomplete: use the texts both stores have finished so far (an extraction that is
        still running or was stopped); parts must cover the same text ranges.
      progress: show a tqdm bar while pairing.

    Returns:
      (source, target, text_of_row): two EmbeddingSources of N rows, and [N] text indices.

    Raises:
      AlignInputError: a pooled store, stores of different texts or part layouts, no pairs.
    """
    from linalign.extract.store import open_store

    stores = []
    for p in (source_path, target_path):
        st = open_store(p, require_complete=not allow_incomplete)
        if not st.per_token:
            raise AlignInputError(f"{p} is a pooled store; token pairing needs per-token stores "
                                  "(extract with --per_token)")
        stores.append(st)
    src_st, tgt_st = stores
    fps = [s.manifest.get("text_fingerprint") for s in stores]
    if fps[0] and fps[1] and fps[0] != fps[1]:
        raise AlignInputError(f"{source_path} and {target_path} hold different texts (text "
                              f"fingerprints {fps[0][:12]}... vs {fps[1][:12]}...)")
    ra, rb = _part_ranges(src_st), _part_ranges(tgt_st)
    if [r[0] for r in ra] != [r[0] for r in rb]:
        raise AlignInputError(f"{source_path} and {target_path} split the texts into different "
                              f"parts ({ra} vs {rb})")
    s_idx, t_idx = _TokenIndex(src_st), _TokenIndex(tgt_st)
    texts = np.intersect1d(s_idx.text_ids, t_idx.text_ids)
    if max_texts is not None:
        texts = texts[:max_texts]
    src_tok, tgt_tok, text_of = pair_token_rows(s_idx, t_idx, texts, progress)
    if len(src_tok) == 0:
        raise AlignInputError(f"no token of {target_path} pairs with a token of {source_path}")
    digest = hashlib.sha256()
    for x in (src_tok, tgt_tok):
        digest.update(np.ascontiguousarray(x).tobytes())
    pair_fp = "pairs:" + digest.hexdigest()

    def source(st, idx, tok):
        m = st.manifest
        return EmbeddingSource(pathlib.Path(st.path), len(tok), st.dim, str(m.get("model", "")),
                               "token", pair_fp, pair_fp, _store=st,
                               _read=lambda lo, hi: idx.gather(tok[lo:hi]),
                               model_fingerprint=str(m.get("model_fingerprint", "")),
                               layer=m.get("layer"), row_tokens=tok, token_ids=idx.ids)

    return source(src_st, s_idx, src_tok), source(tgt_st, t_idx, tgt_tok), text_of


def _part_ranges(store) -> list[tuple[int, int]]:
    """[(first text, end)] of each part's finished rows, in global text indices."""
    out, r = [], 0
    for part in store.parts:
        rows = (part.manifest.get("part") or {}).get("rows")
        lo = int(rows[0]) if rows else r
        out.append((lo, lo + part.num_rows))
        r = lo + part.num_rows
    return out


def check_paired(src: EmbeddingSource, tgt: EmbeddingSource) -> None:
    """Refuses inputs that are not the same texts in the same order."""
    if src.num_rows != tgt.num_rows:
        raise AlignInputError(f"row counts differ: source {src.path} has {src.num_rows} rows, "
                              f"target {tgt.path} has {tgt.num_rows}")
    if src.num_rows == 0:
        raise AlignInputError(f"empty input: {src.path} has 0 rows")
    if (src.text_fingerprint and tgt.text_fingerprint
            and src.text_fingerprint != tgt.text_fingerprint):
        raise AlignInputError(
            f"text fingerprints differ ({src.text_fingerprint[:12]}... vs "
            f"{tgt.text_fingerprint[:12]}...): {src.path} and {tgt.path} embed different texts "
            "or a different order; refusing to pair them")
