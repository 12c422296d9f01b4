"""Row-aligned embedding inputs for fitting: extraction stores or plain .npy files.

An embedding store is a directory with ``manifest.json`` and array shards, as written by
``linalign.extract.store`` (read through its ``open_store``). A plain ``.npy`` file holds one
[n, d] float array and is memory-mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Iterator, Optional

import numpy as np

from linalign.align.validate import AlignInputError


@dataclasses.dataclass
class EmbeddingSource:
    """[num_rows, dim] pooled embeddings readable in consecutive batches.

    Attributes:
      path: where they came from.
      num_rows, dim: shape.
      model, pooling: provenance from the store manifest ("" for .npy files).
      text_fingerprint: sha256 of the texts in row order (stores), or None when unknown.
      data_fingerprint: identity of the array contents (text fingerprint, else file sha256).
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

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive [<= batch_size, dim] batches covering all rows in order."""
        if self._array is not None:
            for i in range(0, self.num_rows, batch_size):
                yield self._array[i:i + batch_size]
        else:
            yield from self._store.iter_batches(batch_size)


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def open_embeddings(path) -> EmbeddingSource:
    """Opens an embedding store directory or a .npy file.

    Raises:
      FileNotFoundError: nothing at ``path``.
      AlignInputError: unsupported file, per-token store, wrong rank or dtype.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no embeddings at {p}")
    if p.is_dir():
        from linalign.extract.store import open_store  # the extraction pipeline's reader

        store = open_store(p)
        m = store.manifest
        if store.per_token:
            raise AlignInputError(
                f"{p} is a per-token store; fitting needs pooled rows (pair tokens across "
                "tokenizers first, or extract with pooling)")
        tf = m.get("text_fingerprint")
        return EmbeddingSource(p, store.num_rows, store.dim, str(m.get("model", "")),
                               str(m.get("pooling", "")), tf, tf or "", _store=store)
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
                           "sha256:" + _sha256_file(p), _array=arr)


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
