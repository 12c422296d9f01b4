"""Checkpointed, fault-tolerant streaming fit of the alignment statistics over many processes.

Work split (all deterministic, computed by every process without talking to the others):

  * rows: process p reads the contiguous rows ``contiguous_bounds(N, p, P)`` of the paired
    inputs, ``batch_per_process`` rows per step; processes with fewer rows feed masked padding
    until the longest shard is done, so every process runs the same number of steps.
  * devices: inside a process, row ``r`` of a step's batch goes to local data shard
    ``r // (batch_per_process / local data shards)``.

Accumulation is local: besides the running total ``base`` (one SufficientStats, d_b rows of
C_bb/C_ba split over "model", replicated over "data"), each data-axis position keeps its own
statistics of the rows it has seen since the last checkpoint (a SufficientStats with a leading
``[D]`` axis sharded over "data"), and each step updates them with ``vmap(merge o
batch_stats)``: a step needs no communication at all. Every ``checkpoint_every`` steps (and at
the end) the local statistics are folded into ``base`` with the exact pairwise merge (one
reduction's worth of traffic, about d_b x (d_b + d_a) floats) and reset; only ``base`` is
checkpointed, so a checkpoint is the size of one set of statistics whatever the device count.
The fold happens on the same schedule with or without a checkpoint directory, and a step's
arithmetic depends only on the step number, so a run resumed from a checkpoint reproduces an
uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from linalign.align import sharding as shd
from linalign.align import stats as stats_lib
from linalign.align.validate import check_pair
from linalign.atomic import atomic_file, atomic_write_json
from linalign.distributed import runtime
from linalign.distributed.checkpointing import CheckpointCorruptError, FitCheckpointer

FIT_VERSION = 1


class FitInputError(ValueError):
    """The paired inputs of a fit are missing, malformed, or do not match each other."""


# --------------------------------------------------------------------------- row sources
class NpyRows:
    """Rows of a 2-D floating ``.npy`` file, memory-mapped (nothing is read until asked)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FitInputError(f"input {path} does not exist")
        try:
            self._arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise FitInputError(f"input {path} is not a readable .npy file: {e}") from None
        if self._arr.ndim != 2 or not np.issubdtype(self._arr.dtype, np.floating):
            raise FitInputError(f"input {path} holds a {self._arr.dtype} array of shape "
                                f"{self._arr.shape}; expected a 2-D floating [rows, dim] array")
        self.path = path
        self.num_rows, self.dim = (int(s) for s in self._arr.shape)

    def read(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self._arr[lo:hi], dtype=np.float32)

    def identity(self) -> dict:
        # Cheap content identity: shape, dtype, size and the first/last MiB of the file.
        size = os.path.getsize(self.path)
        h = hashlib.sha256(str(size).encode())
        with open(self.path, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
        return {"kind": "npy", "rows": self.num_rows, "dim": self.dim,
                "dtype": str(self._arr.dtype), "digest": h.hexdigest()}


class StoreRows:
    """Rows of a pooled ``linalign.extract`` embedding store, one shard in memory at a time."""

    def __init__(self, path: str, store=None):
        from linalign.extract.store import StoreError, open_store
        try:
            self._store = store if store is not None else open_store(path)
        except StoreError as e:
            raise FitInputError(str(e)) from None
        if self._store.per_token:
            raise FitInputError(f"store {path} holds per-token states; pair them into rows first "
                                "(the streaming fit takes one row per example)")
        self.path = path
        self.num_rows, self.dim = self._store.num_rows, self._store.dim
        counts = [int(s["rows"]) for s in self._store.manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cached: tuple[int, Optional[np.ndarray]] = (-1, None)

    def _shard(self, i: int) -> np.ndarray:
        if self._cached[0] != i:
            self._cached = (i, self._store.read_shard(i))
        return self._cached[1]

    def read(self, lo: int, hi: int) -> np.ndarray:
        parts = []
        i = int(np.searchsorted(self._starts, lo, side="right") - 1)
        while lo < hi:
            s0, s1 = self._starts[i], self._starts[i + 1]
            take = min(hi, s1)
            parts.append(self._shard(i)[lo - s0:take - s0])
            lo, i = take, i + 1
        out = np.concatenate(parts) if parts else np.zeros((0, self.dim))
        return out.astype(np.float32, copy=False)

    def identity(self) -> dict:
        shas = "".join(s["sha256"] for s in self._store.manifest["shards"])
        return {"kind": "store", "rows": self.num_rows, "dim": self.dim,
                "digest": hashlib.sha256(shas.encode()).hexdigest()}


class PartedRows:
    """Rows of a parted store (``linalign.distributed.extract``): its parts one after another."""

    def __init__(self, path: str):
        from linalign.distributed.extract import open_parted
        from linalign.extract.store import StoreError
        try:
            parted = open_parted(path)
        except StoreError as e:
            raise FitInputError(str(e)) from None
        # Each part is checked like a plain store (pooled rows only).
        self._parts = [StoreRows(str(st.path), store=st) for st in parted.parts]
        self.path = path
        self.dim = parted.dim
        self.num_rows = parted.num_rows
        self._starts = np.cumsum([0] + [p.num_rows for p in self._parts])

    def read(self, lo: int, hi: int) -> np.ndarray:
        out = []
        for part, s0, s1 in zip(self._parts, self._starts[:-1], self._starts[1:]):
            a, b = max(lo, s0), min(hi, s1)
            if a < b:
                out.append(part.read(int(a - s0), int(b - s0)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def identity(self) -> dict:
        digest = hashlib.sha256("".join(p.identity()["digest"] for p in self._parts).encode())
        return {"kind": "parted_store", "rows": self.num_rows, "dim": self.dim,
                "digest": digest.hexdigest()}


def open_rows(path: str):
    """A ``.npy`` file, an embedding-store directory (with manifest.json) or a parted store
    (with parts.json, written by ``python -m linalign.distributed extract``) as a row source."""
    from linalign.distributed.extract import is_parted
    if is_parted(path):
        return PartedRows(path)
    if os.path.isdir(path):
        return StoreRows(path)
    if path.endswith(".npy"):
        return NpyRows(path)
    raise FitInputError(f"input {path} is neither a .npy file nor an embedding-store directory")


# --------------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class FitPlan:
    """Everything that fixes the arithmetic of a fit; a checkpoint only resumes the same plan."""

    num_rows: int
    d_b: int
    d_a: int
    batch_per_process: int
    process_count: int
    mesh: tuple[tuple[str, int], ...]
    source: dict
    target: dict

    def num_steps(self) -> int:
        longest = max(hi - lo for lo, hi in (runtime.contiguous_bounds(self.num_rows, p, self.process_count)
                                             for p in range(self.process_count)))
        return -(-longest // self.batch_per_process)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["mesh"] = [list(x) for x in self.mesh]
        return d


def local_state_shardings(mesh: Mesh, rules: shd.ShardingRules) -> stats_lib.SufficientStats:
    """Shardings of the per-device statistics: a leading "data" axis on every leaf."""
    lead = rules.mesh_axes(shd.BATCH)
    lead = tuple(a for a in lead if a in mesh.axis_names)
    lead_spec = None if not lead else (lead[0] if len(lead) == 1 else lead)
    base = stats_lib.stats_shardings(mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, P(lead_spec, *s.spec)), base)


def data_size(mesh: Mesh, rules: shd.ShardingRules) -> int:
    axes = [a for a in rules.mesh_axes(shd.BATCH) if a in mesh.axis_names]
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def _local_step(state_D, z_b, z_a, mask):
    """Each data position merges its own slice of the batch into its own statistics."""
    n_dev = state_D.n.shape[0]
    z_b = z_b.reshape(n_dev, -1, z_b.shape[-1])
    z_a = z_a.reshape(n_dev, -1, z_a.shape[-1])
    mask = mask.reshape(n_dev, -1)
    dtype = state_D.c_bb.dtype
    return jax.vmap(lambda s, b, a, m: stats_lib.merge(s, stats_lib.batch_stats(b, a, m, dtype)))(
        state_D, z_b, z_a, mask)


def fold(base: stats_lib.SufficientStats, local_D: stats_lib.SufficientStats):
    """(base merged with every device's local statistics, zeroed local statistics)."""
    return (stats_lib.merge(base, reduce_devices(local_D)),
            jax.tree.map(jnp.zeros_like, local_D))


def reduce_devices(state_D: stats_lib.SufficientStats) -> stats_lib.SufficientStats:
    """Pairwise (tree) merge over the leading axis: [D]-stacked statistics -> one set."""
    while state_D.n.shape[0] > 1:
        d = state_D.n.shape[0]
        even = jax.tree.map(lambda x: x[0:d - d % 2:2], state_D)
        odd = jax.tree.map(lambda x: x[1:d - d % 2:2], state_D)
        merged = jax.vmap(stats_lib.merge)(even, odd)
        if d % 2:
            merged = jax.tree.map(lambda m, x: jnp.concatenate([m, x[d - 1:]]), merged, state_D)
        state_D = merged
    return jax.tree.map(lambda x: x[0], state_D)


class StreamingFit:
    """One process's side of a multi-process fit. Every process builds one with the same args.

    Args:
      source_path, target_path: paired inputs (.npy or embedding-store directory).
      mesh: global mesh (see ``runtime.global_mesh``); rows split over "data", C_bb / C_ba rows
        over "model".
      batch_per_process: rows each process feeds per step (a multiple of its data shards).
      checkpoint_dir: where to checkpoint (None: no checkpoints).
      checkpoint_every: steps between checkpoints.
      rules: ShardingRules for the statistics (default batch->data, feat_b->model).
      batch_delay_s: sleep after each step (fault-injection tests need a run that is slow
        enough to be killed mid-stream; 0 otherwise).
    """

    def __init__(self, source_path: str, target_path: str, mesh: Mesh, batch_per_process: int,
                 checkpoint_dir: Optional[str] = None, checkpoint_every: int = 100,
                 rules: Optional[shd.ShardingRules] = None, batch_delay_s: float = 0.0):
        self.src, self.tgt = open_rows(source_path), open_rows(target_path)
        if self.src.num_rows != self.tgt.num_rows:
            raise FitInputError(f"source {source_path} has {self.src.num_rows} rows but target "
                                f"{target_path} has {self.tgt.num_rows}; rows must be the same texts")
        if self.src.num_rows == 0:
            raise FitInputError(f"inputs {source_path} and {target_path} hold no rows")
        self.mesh, self.rules = mesh, rules or shd.ShardingRules()
        self.pid, self.nproc = jax.process_index(), jax.process_count()
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh {dict(mesh.shape)} has no 'data' axis to split rows over")
        self.first_shard, self.local_shards = runtime.local_data_shards(mesh, "data")
        if batch_per_process <= 0 or batch_per_process % self.local_shards:
            raise ValueError(f"batch_per_process={batch_per_process} must be a positive multiple of "
                             f"this process's {self.local_shards} data-axis devices")
        model = mesh.shape.get("model", 1)
        if self.src.dim % model:
            raise ValueError(f"d_b={self.src.dim} is not divisible by the model axis ({model})")
        self.plan = FitPlan(self.src.num_rows, self.src.dim, self.tgt.dim, batch_per_process,
                            self.nproc, tuple((k, int(v)) for k, v in mesh.shape.items()),
                            self.src.identity(), self.tgt.identity())
        self.lo, self.hi = runtime.contiguous_bounds(self.plan.num_rows, self.pid, self.nproc)
        self.checkpoint_every = checkpoint_every
        self.batch_delay_s = batch_delay_s
        self.ckpt = FitCheckpointer(checkpoint_dir) if checkpoint_dir else None
        self.state_sh = local_state_shardings(mesh, self.rules)
        self.rows_sh = NamedSharding(mesh, self.rules.spec((shd.BATCH, None), mesh))
        self.mask_sh = NamedSharding(mesh, self.rules.spec((shd.BATCH,), mesh))
        self._step_fn = jax.jit(_local_step, in_shardings=(self.state_sh, self.rows_sh,
                                                           self.rows_sh, self.mask_sh),
                                out_shardings=self.state_sh, donate_argnums=0)
        self.base_sh = stats_lib.stats_shardings(mesh, self.rules)
        self._fold_fn = jax.jit(fold, in_shardings=(self.base_sh, self.state_sh),
                                out_shardings=(self.base_sh, self.state_sh), donate_argnums=(0, 1))

    # ------------------------------------------------------------------ state
    def abstract_base(self) -> stats_lib.SufficientStats:
        """Shapes and shardings of the running total (what a checkpoint holds)."""
        shapes = jax.eval_shape(lambda: stats_lib.init_stats(self.plan.d_b, self.plan.d_a, jnp.float32))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.base_sh)

    def init_base(self) -> stats_lib.SufficientStats:
        return stats_lib.init_stats(self.plan.d_b, self.plan.d_a, jnp.float32, sharding=self.base_sh)

    def init_local(self) -> stats_lib.SufficientStats:
        """Zero per-device statistics: a leading [D] axis over "data"."""
        d = data_size(self.mesh, self.rules)
        shapes = jax.eval_shape(lambda: stats_lib.init_stats(self.plan.d_b, self.plan.d_a, jnp.float32))
        return jax.jit(lambda: jax.tree.map(lambda a: jnp.zeros((d, *a.shape), a.dtype), shapes),
                       out_shardings=self.state_sh)()

    def next_row(self, step: int) -> int:
        return min(self.hi, self.lo + step * self.plan.batch_per_process)

    def _meta(self, step: int) -> dict:
        mine = np.array([self.pid, self.lo, self.hi, self.next_row(step)], np.int64)
        everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 4)
        return {"version": FIT_VERSION, "step": step, "plan": self.plan.to_json(),
                "positions": [{"process": int(p), "lo": int(lo), "hi": int(hi), "next_row": int(r)}
                              for p, lo, hi, r in everyone]}

    def _resume(self) -> tuple[int, Any]:
        if self.ckpt is None:
            return 0, self.init_base()
        step = self.ckpt.latest_complete_step()
        if step is None:
            return 0, self.init_base()
        state, meta = self.ckpt.restore(step, self.abstract_base())
        if meta.get("plan") != json.loads(json.dumps(self.plan.to_json())):
            raise CheckpointCorruptError(
                f"checkpoint step {step} under {self.ckpt.directory} belongs to a different fit: "
                f"its plan {meta.get('plan')} differs from this run's {self.plan.to_json()}; use "
                "another checkpoint directory")
        pos = meta["positions"][self.pid]
        if (pos["lo"], pos["hi"], pos["next_row"]) != (self.lo, self.hi, self.next_row(step)):
            raise CheckpointCorruptError(
                f"checkpoint step {step}: process {self.pid}'s saved reader position {pos} does "
                f"not match step {step} of this plan (rows {self.lo}..{self.hi})")
        logging.info("process %d resumes at step %d (row %d of %d..%d)", self.pid, step,
                     pos["next_row"], self.lo, self.hi)
        return step, state

    # ------------------------------------------------------------------ run
    def _batch(self, step: int):
        b = self.plan.batch_per_process
        lo = self.next_row(step)
        hi = min(self.hi, lo + b)
        z_b, z_a, _ = check_pair(self.src.read(lo, hi), self.tgt.read(lo, hi), d_b=self.plan.d_b,
                                 d_a=self.plan.d_a, allow_empty=True, row_offset=lo)
        mask = np.zeros((b,), np.bool_)
        mask[:hi - lo] = True
        pad = b - (hi - lo)
        if pad:
            z_b = np.concatenate([z_b, np.zeros((pad, self.plan.d_b), np.float32)])
            z_a = np.concatenate([z_a, np.zeros((pad, self.plan.d_a), np.float32)])
        put = jax.make_array_from_process_local_data
        return put(self.rows_sh, z_b), put(self.rows_sh, z_a), put(self.mask_sh, mask)

    def run(self) -> stats_lib.SufficientStats:
        """Feeds all steps (resuming from the latest complete checkpoint), folding on schedule.

        Returns:
          the statistics of all rows, identical on every process (sharded per ``rules``).
        """
        step, base = self._resume()
        local = self.init_local()
        total = self.plan.num_steps()
        t0, last_log = time.time(), time.time()
        while step < total:
            local = self._step_fn(local, *self._batch(step))
            step += 1
            if self.batch_delay_s:
                jax.block_until_ready(local)
                time.sleep(self.batch_delay_s)
            if step % self.checkpoint_every == 0 or step == total:
                base, local = self._fold_fn(base, local)
                if self.ckpt is not None:
                    self.ckpt.save(step, base, self._meta(step))
            if time.time() - last_log > 10 or step == total:
                last_log = time.time()
                logging.info("step %d/%d (%.1f steps/s)", step, total,
                             step / max(time.time() - t0, 1e-9))
        return base


def stats_to_host(stats: stats_lib.SufficientStats) -> dict[str, np.ndarray]:
    """Host copies of every field on every process, whatever the sharding."""
    out = {}
    for k in ("n", "mean_b", "mean_a", "c_bb", "c_ba", "ss_a"):
        x = getattr(stats, k)
        out[k] = (np.asarray(x) if x.is_fully_addressable
                  else np.asarray(multihost_utils.process_allgather(x, tiled=True)))
    return out


def _atomic_npz(path: str, arrays: dict) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_outputs(out_dir: str, stats_np: dict, lam: float, plan: FitPlan,
                  w_ba: np.ndarray, b_a: np.ndarray) -> None:
    """Writes stats.npz, map.npz (W, b, lam) and fit.json; process 0 only, atomic renames."""
    if jax.process_index() != 0:
        return
    os.makedirs(out_dir, exist_ok=True)
    _atomic_npz(os.path.join(out_dir, "stats.npz"), stats_np)
    _atomic_npz(os.path.join(out_dir, "map.npz"), {"W": w_ba, "b": b_a, "lam": np.float64(lam)})
    atomic_write_json(os.path.join(out_dir, "fit.json"),
                      {"plan": plan.to_json(), "lam": lam, "n": int(stats_np["n"]),
                       "process_count": jax.process_count(), "device_count": jax.device_count()},
                      sort_keys=False)


def finish(fit: StreamingFit, stats: stats_lib.SufficientStats, out_dir: str, lam: float) -> dict:
    """Gathers the statistics to every host, solves, and writes the outputs (process 0).

    The solve runs on one device of each process from host copies, through
    ``linalign.align.solve.solve`` (its singularity checks included); ``memory.solve_sharded``
    is the model-axis-split variant for widths whose factorisation does not fit next to the
    statistics on one device.

    Returns:
      the host statistics (same on every process).
    """
    from linalign.align.solve import solve as ridge_solve

    stats_np = stats_to_host(stats)
    # Every process solves (cheap next to the fit, and deterministic) so that a singular system
    # fails on all of them at once instead of leaving the others waiting at the barrier.
    local = stats_lib.from_moments(*(stats_np[k] for k in ("n", "mean_b", "mean_a", "c_bb",
                                                            "c_ba", "ss_a")))
    w_ba, b_a = ridge_solve(local, lam)
    write_outputs(out_dir, stats_np, lam, fit.plan, np.asarray(w_ba), np.asarray(b_a))
    if jax.process_index() == 0:
        logging.info("fit of %d rows written to %s", int(stats_np["n"]), out_dir)
    multihost_utils.sync_global_devices("linalign_fit_outputs")
    return stats_np


def load_map(out_dir: str):
    """The AffineMap a ``fit`` run wrote to ``out_dir`` (map.npz + fit.json)."""
    from linalign.align.affine_map import AffineMap, MapMetadata

    path = os.path.join(out_dir, "map.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{out_dir} holds no map.npz; did the fit finish?")
    with np.load(path) as z:
        w_ba, b_a, lam = z["W"], z["b"], float(z["lam"])
    with open(os.path.join(out_dir, "fit.json")) as f:
        info = json.load(f)
    digest = hashlib.sha256(json.dumps([info["plan"]["source"], info["plan"]["target"]],
                                       sort_keys=True).encode()).hexdigest()
    return AffineMap(w_ba, b_a, MapMetadata(d_b=int(w_ba.shape[0]), d_a=int(w_ba.shape[1]), lam=lam,
                                            n=int(info["n"]), data_fingerprint=digest))
