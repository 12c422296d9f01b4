"""The multi-process fit: the single-host fit's pieces, run by every process on its own rows.

Every process runs the same command (JAX's multi-controller model) and builds the same plan:

  * rows: process p of P reads the contiguous rows ``contiguous_bounds(N, p, P)`` of the paired
    sources (``linalign.align.sources``: stores of any number of parts, .npy files, or the token
    pairs of two per-token stores), ``batch_size`` rows per step;
  * accumulation: the single-host fit's ``FoldedAccumulator`` on this process's devices, each
    row routed to the fold of its GLOBAL row index (``lambdas.fold_of``) and held out by the same
    hash of it (``fitting.heldout_mask``), so folds and held-out rows are identical however many
    processes share the rows;
  * after the last step the per-fold statistics of all processes are gathered to every process
    and merged exactly in process order (``stats.merge_all``), then ``lambdas.choose_lambda``
    (default "auto": exact k-fold CV) and ``solve.solve`` (float64, on the host) run on every
    process, and process 0 writes the map with ``AffineMap.save`` plus report.json/report.md
    (``fitting.write_fit``).

Checkpoints (orbax, ``checkpointing.FitCheckpointer``) are the only thing orbax is used for:
every ``checkpoint_every`` steps each process merges its accumulator into its running per-fold
statistics and saves them with its reader position; a resumed run restores them and continues
from the next row. The merge happens on the same schedule with or without a checkpoint
directory, so a resumed run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from linalign.align import stats as stats_lib
from linalign.align.folded import FoldedAccumulator, HostAccumulator
from linalign.align.lambdas import LambdaSpec
from linalign.align.sources import EmbeddingSource, check_paired
from linalign.distributed.checkpointing import CheckpointCorruptError, FitCheckpointer
from linalign.mesh import contiguous_bounds

FIT_VERSION = 2
KEEP_ROWS = 20000  # held-out rows kept (over all processes) for the cosine of the final map
_HOST_FIELDS = ("n", "mean_b", "mean_a", "c_bb", "c_ba", "ss_a", "mean_b_lo", "mean_a_lo")


class FitInputError(ValueError):
    """The paired inputs of a fit are missing, malformed, or do not match each other."""


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """Everything that fixes the arithmetic of a fit; a checkpoint only resumes the same plan."""

    num_rows: int
    d_b: int
    d_a: int
    batch_size: int
    process_count: int
    folds: int
    seed: int
    heldout: float
    dtype: str
    source: str
    target: str

    def bounds(self, p: int) -> tuple[int, int]:
        return contiguous_bounds(self.num_rows, p, self.process_count)

    def num_steps(self) -> int:
        longest = max(hi - lo for lo, hi in map(self.bounds, range(self.process_count)))
        return -(-longest // self.batch_size)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def allgather64(x: np.ndarray) -> np.ndarray:
    """[P, *x.shape] float64 values of every process, exactly.

    ``process_allgather`` goes through jax arrays, which hold float32 unless jax_enable_x64 is
    on; the bits travel as uint32 pairs instead, so nothing is rounded.
    """
    bits = np.ascontiguousarray(x, np.float64).view(np.uint32)
    out = np.asarray(multihost_utils.process_allgather(bits))
    return np.ascontiguousarray(out.reshape(-1, *bits.shape)).view(np.float64).reshape(-1, *np.shape(x))


def _host_zeros_folds(k: int, d_b: int, d_a: int) -> list:
    return [stats_lib.host_zeros(d_b, d_a) for _ in range(k)]


def _stack(hosts: list) -> dict[str, np.ndarray]:
    return {f: np.stack([np.asarray(getattr(h, f), np.float64) for h in hosts]) for f in _HOST_FIELDS}


def _unstack(d: dict, k: int, acc_dtype: str) -> list:
    return [stats_lib.HostStats(**{f: (np.int64(round(float(d[f][j]))) if f == "n"
                                       else np.asarray(d[f][j], np.float64))
                                   for f in _HOST_FIELDS}, acc_dtype=acc_dtype) for j in range(k)]


class StreamingFit:
    """One process's side of a multi-process fit. Every process builds one with the same args.

    Args:
      src, tgt: paired sources (``open_embeddings`` / ``open_token_pairs``), same rows.
      lam: lambda spec (folds are accumulated only when it needs them).
      folds: k of the k-fold CV.
      seed: fold / held-out assignment seed.
      heldout: fraction of rows held out of the fit to score it (hash of the global row index).
      batch_size: rows each process reads per step.
      dtype: accumulation dtype ("float32" in jax, or "float64": numpy on the host).
      mesh: devices of this process to accumulate on (None: the default device).
      checkpoint_dir: where to checkpoint (None: no checkpoints).
      checkpoint_every: steps between checkpoints (and merges of the accumulator).
      max_rows: use only the first ``max_rows`` rows.
      batch_delay_s: sleep after each step (fault-injection tests need a run that is slow
        enough to be killed mid-stream; 0 otherwise).
    """

    def __init__(self, src: EmbeddingSource, tgt: EmbeddingSource, *, lam: Any = "auto",
                 folds: int = 5, seed: int = 0, heldout: float = 0.0, batch_size: int = 8192,
                 dtype: str = "float32", mesh=None, checkpoint_dir: Optional[str] = None,
                 checkpoint_every: int = 100, max_rows: Optional[int] = None,
                 batch_delay_s: float = 0.0):
        try:
            check_paired(src, tgt)
        except ValueError as e:
            raise FitInputError(str(e)) from None
        if batch_size <= 0 or checkpoint_every <= 0:
            raise ValueError(f"batch_size ({batch_size}) and checkpoint_every "
                             f"({checkpoint_every}) must be positive")
        self.src, self.tgt, self.mesh = src, tgt, mesh
        self.spec = LambdaSpec.parse(lam)
        k = int(folds) if self.spec.needs_folds else 1
        n = src.num_rows if max_rows is None else min(int(max_rows), src.num_rows)
        if n < 2:
            raise FitInputError(f"need at least 2 paired rows, got {n}")
        self.pid, self.nproc = jax.process_index(), jax.process_count()
        self.plan = FitPlan(n, src.dim, tgt.dim, int(batch_size), self.nproc, k, int(seed),
                            float(heldout), str(np.dtype(dtype)), src.data_fingerprint,
                            tgt.data_fingerprint)
        self.lo, self.hi = self.plan.bounds(self.pid)
        self.checkpoint_every = int(checkpoint_every)
        self.batch_delay_s = batch_delay_s
        self.ckpt = FitCheckpointer(checkpoint_dir) if checkpoint_dir else None

    # ------------------------------------------------------------------ state
    def next_row(self, step: int) -> int:
        return min(self.hi, self.lo + step * self.plan.batch_size)

    def _new_accumulators(self, row: int):
        p = self.plan
        acc = FoldedAccumulator(p.d_b, p.d_a, folds=p.folds, seed=p.seed, dtype=p.dtype,
                                mesh=self.mesh, row_offset=row)
        return acc, HostAccumulator(p.d_b, p.d_a)

    def _process_sharding(self):
        """A 1-D mesh of one device per process: checkpoints hold one slice per process."""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        devs = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        firsts = [next(d for d in devs if d.process_index == q) for q in range(self.nproc)]
        return NamedSharding(Mesh(np.asarray(firsts, dtype=object), ("process",)), P("process"))

    def _to_global(self, local: dict) -> dict:
        # float64 travels as its bits (uint32 pairs): exact, and independent of jax_enable_x64.
        sh = self._process_sharding()
        return {k: jax.make_array_from_process_local_data(
                    sh, np.ascontiguousarray(v, np.float64).view(np.uint32)[None])
                for k, v in local.items()}

    def _abstract(self) -> dict:
        p = self.plan
        sh = self._process_sharding()
        k1 = p.folds + 1  # the folds, then the held-out statistics
        shapes = {"n": (k1,), "mean_b": (k1, p.d_b), "mean_a": (k1, p.d_a),
                  "c_bb": (k1, p.d_b, p.d_b), "c_ba": (k1, p.d_b, p.d_a), "ss_a": (k1, p.d_a),
                  "mean_b_lo": (k1, p.d_b), "mean_a_lo": (k1, p.d_a)}
        return {k: jax.ShapeDtypeStruct((self.nproc, *s[:-1], 2 * s[-1]), np.uint32, sharding=sh)
                for k, s in shapes.items()}

    def _meta(self, step: int) -> dict:
        mine = np.array([self.pid, self.lo, self.hi, self.next_row(step)], np.float64)
        everyone = (allgather64(mine) if self.nproc > 1 else mine[None]).astype(np.int64)
        return {"version": FIT_VERSION, "step": step, "plan": self.plan.to_json(),
                "positions": [{"process": int(p), "lo": int(lo), "hi": int(hi), "next_row": int(r)}
                              for p, lo, hi, r in everyone]}

    def _save(self, step: int, base: list, val) -> None:
        self.ckpt.save(step, self._to_global(_stack(base + [val])), self._meta(step))

    def _resume(self) -> tuple[int, list, Any]:
        p = self.plan
        fresh = (0, _host_zeros_folds(p.folds, p.d_b, p.d_a), stats_lib.host_zeros(p.d_b, p.d_a))
        if self.ckpt is None:
            return fresh
        step = self.ckpt.latest_complete_step()
        if step is None:
            return fresh
        state, meta = self.ckpt.restore(step, self._abstract())
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
        local = {k: np.ascontiguousarray(np.asarray(v.addressable_shards[0].data)[0]).view(np.float64)
                 for k, v in state.items()}
        hosts = _unstack(local, p.folds + 1, p.dtype)
        logging.info("process %d resumes at step %d (row %d of %d..%d)", self.pid, step,
                     pos["next_row"], self.lo, self.hi)
        return step, hosts[:-1], hosts[-1]

    # ------------------------------------------------------------------ run
    def _read(self, lo: int, hi: int):
        from linalign.align.fitting import heldout_mask

        z_b, z_a = self.src.read(lo, hi), self.tgt.read(lo, hi)
        idx = np.arange(lo, hi)
        return z_b, z_a, idx, heldout_mask(idx, self.plan.heldout, self.plan.seed)

    def run(self, progress: bool = False) -> tuple[list, Any]:
        """Feeds all steps (resuming from the latest complete checkpoint).

        Args:
          progress: show a tqdm bar of this process's rows (the CLI sets it on process 0).

        Returns:
          (fold statistics [k] HostStats, held-out HostStats), merged over all processes and
          identical on every process.
        """
        p = self.plan
        step, base, val = self._resume()
        acc, acc_val = self._new_accumulators(self.next_row(step))
        total = p.num_steps()
        t0, last_log, rows = time.time(), time.time(), 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.hi - self.lo, initial=self.next_row(step) - self.lo,
                       unit="rows", desc="accumulating", mininterval=2.0)
        while step < total:
            lo = self.next_row(step)
            hi = min(self.hi, lo + p.batch_size)
            if hi > lo:
                z_b, z_a, idx, is_val = self._read(lo, hi)
                acc.add(z_b, z_a, mask=~is_val, row_index=idx)
                if is_val.any():
                    sel = np.flatnonzero(is_val)
                    acc_val.add(z_b[sel], z_a[sel])
                rows += hi - lo
                if bar is not None:
                    bar.update(hi - lo)
            step += 1
            if self.batch_delay_s:
                time.sleep(self.batch_delay_s)
            if step % self.checkpoint_every == 0 or step == total:
                base = [stats_lib.merge_all([b, f]) for b, f in zip(base, acc.fold_stats)]
                val = stats_lib.merge_all([val, acc_val.stats])
                acc, acc_val = self._new_accumulators(self.next_row(step))
                if self.ckpt is not None:
                    self._save(step, base, val)
            if time.time() - last_log > 10 or step == total:
                last_log = time.time()
                logging.info("step %d/%d: %d rows in %.1f s (%.0f rows/s on process %d)", step,
                             total, rows, time.time() - t0, rows / max(time.time() - t0, 1e-9),
                             self.pid)
        if bar is not None:
            bar.close()
        return self._gather(base), self._gather([val])[0]

    def _gather(self, hosts: list) -> list:
        """Per-fold statistics of every process, merged exactly in process order."""
        local = _stack(hosts)
        if self.nproc == 1:
            return [stats_lib.merge_all([h]) for h in hosts]
        everyone = {k: allgather64(v) for k, v in local.items()}
        per_proc = [_unstack({k: v[q] for k, v in everyone.items()}, len(hosts), self.plan.dtype)
                    for q in range(self.nproc)]
        return [stats_lib.merge_all([per_proc[q][j] for q in range(self.nproc)])
                for j in range(len(hosts))]

    def heldout_cosine(self, w, b) -> tuple[Optional[float], int]:
        """Mean cosine of the map on held-out rows: each process's first KEEP_ROWS / P of them.

        The rows are read again (a resumed run never saw the early ones), so the number is the
        same with or without an interruption.
        """
        from linalign.align.affine_map import AffineMap

        quota = -(-KEEP_ROWS // self.nproc)
        keep_b, keep_a, have, lo = [], [], 0, self.lo
        while have < quota and lo < self.hi:
            hi = min(self.hi, lo + self.plan.batch_size)
            z_b, z_a, _, is_val = self._read(lo, hi)
            sel = np.flatnonzero(is_val)[:quota - have]
            keep_b.append(z_b[sel])
            keep_a.append(z_a[sel])
            have += len(sel)
            lo = hi
        s = 0.0
        if have:
            s = AffineMap(w, b).evaluate(np.concatenate(keep_b), np.concatenate(keep_a))["cosine"] * have
        both = np.array([s, have], np.float64)
        if self.nproc > 1:
            both = allgather64(both).sum(0)
        return (float(both[0] / both[1]) if both[1] else None), int(both[1])


def finish(fit: StreamingFit, fold_stats: list, val, *, grid=None, method: str = "cholesky",
           metadata: Optional[dict] = None, seconds_accumulate: float = 0.0):
    """Lambda policy, float64 solve and report, on every process; returns a FitResult.

    Every process solves (cheap next to the accumulation, and deterministic) so that a
    singular system fails on all of them at once instead of leaving the others at a barrier.
    """
    from linalign.align.fitting import solve_folds

    p = fit.plan
    t0 = time.perf_counter()
    total = stats_lib.merge_all(fold_stats)
    n_train = int(total.n)
    if n_train < 2:
        raise FitInputError(f"only {n_train} training rows; need at least 2")
    result = solve_folds(fold_stats, fit.spec, total=total, val_stats=val,
                         cosine=fit.heldout_cosine, grid=grid, method=method, metadata=metadata,
                         extra={"process_count": p.process_count})
    t_solve = time.perf_counter() - t0
    import resource
    rss = np.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0])  # KiB -> MiB
    if p.process_count > 1:
        rss = allgather64(rss).reshape(-1)
    result.report.update({
        "source": str(fit.src.path), "target": str(fit.tgt.path),
        "source_model": fit.src.model, "target_model": fit.tgt.model,
        "d_b": p.d_b, "d_a": p.d_a, "n_rows": p.num_rows, "n_val": int(val.n),
        "accumulation_dtype": p.dtype, "process_count": p.process_count,
        "seconds_accumulate": seconds_accumulate, "seconds_solve": t_solve,
        "peak_rss_mib": [float(x) for x in rss],
        "rows_per_second": p.num_rows / max(seconds_accumulate, 1e-9)})
    return result


def source_metadata(src: EmbeddingSource, tgt: EmbeddingSource) -> dict:
    """MapMetadata fields describing the two sources (what the single-host fit records)."""
    return {"source_model": src.model, "target_model": tgt.model,
            "source_fingerprint": src.data_fingerprint, "target_fingerprint": tgt.data_fingerprint,
            "pooling": src.pooling if src.pooling == tgt.pooling else f"{src.pooling}|{tgt.pooling}",
            "layer": src.layer if src.layer == tgt.layer else None,
            "data_fingerprint": src.data_fingerprint or tgt.data_fingerprint}
