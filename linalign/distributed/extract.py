"""Per-process extraction into one sharded embedding store per process, plus an index.

Every process of a multi-process job runs the same command. Process p of P takes the contiguous
rows ``contiguous_bounds(N, p, P)`` of the corpus (computed without talking to anyone), runs the
model on its own devices only (a ``data`` mesh over ``jax.local_devices()``: extraction needs no
communication) and writes an ordinary ``linalign.extract`` store to
``<out_dir>/part-<p>-of-<P>``; each part is resumable on its own. After a barrier, process 0
checks every part and writes ``<out_dir>/parts.json`` (temporary name, then rename): the parts in
corpus order, their row ranges, and the fingerprint of the whole corpus. A directory with that
index is a *parted store*; ``open_parted`` reads it as one sequence of rows, and the streaming
fit accepts it wherever it accepts a store.

    launch/local_cpu.sh -n 2 -m 4 -- python -m linalign.distributed extract \
        --model=all-minilm-l6-v2 --corpus=bbc_news --out_dir=emb/minilm --batch_size=32
"""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import numpy as np
from absl import logging

from linalign.atomic import atomic_write_json
from linalign.distributed import runtime
from linalign.extract import store as store_lib

INDEX = "parts.json"
PART_FORMAT = 1


def part_name(process_index: int, process_count: int) -> str:
    return f"part-{process_index:05d}-of-{process_count:05d}"


def local_mesh():
    """A 1-D ``data`` mesh over this process's own devices."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.local_devices(), dtype=object), ("data",))


def extract_part(model, texts: Sequence[str], out_dir, process_index: int, process_count: int,
                 mesh=None, corpus: str = "", **kwargs) -> store_lib.EmbeddingStore:
    """Extracts this process's contiguous share of ``texts`` into its part of ``out_dir``.

    Args:
      model: a LoadedModel.
      texts: the whole corpus (every process passes the same list).
      out_dir: the parted store's directory.
      process_index, process_count: this process and the job size.
      mesh: devices to run on (default: this process's local devices as a ``data`` mesh).
      corpus: corpus name for the manifest.
      **kwargs: passed to ``linalign.extract.extract`` (pooling, max_length, batch_size, ...).

    Returns:
      This process's complete part (an EmbeddingStore).
    """
    from linalign.extract import extract

    if not texts:
        raise ValueError("the corpus is empty: nothing to extract")
    lo, hi = runtime.contiguous_bounds(len(texts), process_index, process_count)
    if hi <= lo:
        raise ValueError(f"{len(texts)} texts cannot be split over {process_count} processes: "
                         f"process {process_index} would get none")
    part_dir = pathlib.Path(out_dir) / part_name(process_index, process_count)
    meta = {"corpus": corpus, "part": {"index": process_index, "count": process_count,
                                       "rows": [lo, hi], "corpus_rows": len(texts),
                                       "corpus_fingerprint": store_lib.text_fingerprint(texts)}}
    logging.info("process %d of %d extracts rows [%d, %d) of %d into %s", process_index,
                 process_count, lo, hi, len(texts), part_dir)
    return extract(model, list(texts[lo:hi]), out_dir=part_dir,
                   mesh=mesh if mesh is not None else local_mesh(), extra_meta=meta, **kwargs)


def write_index(out_dir, process_count: int) -> dict:
    """Checks that all ``process_count`` parts are complete and consistent; writes parts.json."""
    out = pathlib.Path(out_dir)
    parts, rows = [], 0
    first = None
    for p in range(process_count):
        name = part_name(p, process_count)
        try:
            st = store_lib.open_store(out / name)
        except store_lib.StoreError as e:
            raise store_lib.StoreError(f"parted store {out}: part {name}: {e}") from None
        m = st.manifest
        info = m.get("part") or {}
        lo, hi = info.get("rows", [None, None])
        if lo != rows or hi is None or hi - lo != st.num_rows:
            raise store_lib.StoreError(
                f"parted store {out}: part {name} holds rows {info.get('rows')} "
                f"({st.num_rows} stored); expected to start at row {rows}")
        key = {k: m.get(k) for k in ("model_fingerprint", "pooling", "per_token", "dim",
                                     "max_length", "layer", "dtype")}
        key["corpus_fingerprint"] = info.get("corpus_fingerprint")
        if first is None:
            first = key
        elif key != first:
            diff = sorted(k for k in key if key[k] != first[k])
            raise store_lib.StoreError(f"parted store {out}: part {name} differs from part 0 in "
                                       f"{', '.join(diff)}")
        parts.append({"name": name, "rows": [lo, hi]})
        rows = hi
    corpus_rows = (store_lib.open_store(out / parts[0]["name"]).manifest["part"]["corpus_rows"])
    if rows != corpus_rows:
        raise store_lib.StoreError(f"parted store {out}: parts hold {rows} rows, the corpus has "
                                   f"{corpus_rows}")
    index = {"version": PART_FORMAT, "num_rows": rows, "parts": parts, **first}
    atomic_write_json(out / INDEX, index)
    return index


def is_parted(path) -> bool:
    return (pathlib.Path(path) / INDEX).is_file()


class PartedStore:
    """The parts of a parted store read as one sequence of rows, in corpus order."""

    def __init__(self, path, verify: bool = False):
        self.path = pathlib.Path(path)
        idx_path = self.path / INDEX
        if not idx_path.is_file():
            raise store_lib.StoreError(f"{self.path} has no {INDEX}: not a parted store (or its "
                                       "extraction has not finished on every process)")
        try:
            self.index = json.loads(idx_path.read_text())
        except json.JSONDecodeError as e:
            raise store_lib.StoreError(f"{idx_path} is corrupt: {e}") from None
        if self.index.get("version") != PART_FORMAT:
            raise store_lib.StoreError(f"{idx_path}: unsupported version {self.index.get('version')}")
        self.parts = [store_lib.open_store(self.path / p["name"], verify=verify)
                      for p in self.index["parts"]]
        for p, st in zip(self.index["parts"], self.parts):
            if st.num_rows != p["rows"][1] - p["rows"][0]:
                raise store_lib.StoreError(f"{self.path}: part {p['name']} holds {st.num_rows} "
                                           f"rows, the index says {p['rows']}")

    @property
    def num_rows(self) -> int:
        return int(self.index["num_rows"])

    @property
    def dim(self) -> int:
        return int(self.index["dim"])

    @property
    def per_token(self) -> bool:
        return bool(self.index["per_token"])

    def read_all(self):
        data = [st.read_all() for st in self.parts]
        return store_lib.TokenRows.concat(data) if self.per_token else np.concatenate(data)


def open_parted(path, verify: bool = False) -> PartedStore:
    return PartedStore(path, verify=verify)


def run(model_path: str, texts: Sequence[str], out_dir: str, corpus: str = "",
        dtype: str = "float32", mesh=None, **kwargs) -> Optional[dict]:
    """The whole per-process job: load, extract this process's part, barrier, index (process 0).

    Returns the index on process 0, None elsewhere.
    """
    import jax
    from jax.experimental import multihost_utils

    from linalign import checkpoints

    p, n = jax.process_index(), jax.process_count()
    mesh = mesh if mesh is not None else local_mesh()
    model = checkpoints.load(model_path, dtype=dtype, mesh=mesh)
    extract_part(model, texts, out_dir, p, n, mesh=mesh, corpus=corpus, **kwargs)
    multihost_utils.sync_global_devices("linalign_extract_parts_written")
    index = write_index(out_dir, n) if p == 0 else None
    multihost_utils.sync_global_devices("linalign_extract_index_written")
    return index
