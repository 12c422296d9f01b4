"""Per-fold accumulation in one streaming pass, and a float64 accumulator on the host.

``FoldedAccumulator`` routes each row to the SufficientStats of its fold (``fold_of`` its
global row index) as the rows stream by; ``fold_stats`` feeds ``choose_lambda`` (exact k-fold
CV) and ``stats`` is the exact merge of the folds, the statistics of every row.

Rows of one fold are buffered on the host until a full compiled step of them is ready, so the
per-fold accumulators run the same full-size steps as an unfolded one (no k-fold padding) and
the pass costs the same matmul FLOPs; the routing itself is one gather per batch.

Float64 accumulation (``dtype="float64"``) runs in numpy on the host (``HostAccumulator``):
jax's float64 switch is a process-wide flag (``jax_enable_x64``) that changes the dtype of
every array any other code creates, and its scoped form changes tracing under other users'
feet; numpy float64 matmuls (BLAS dgemm) need no global state and cost about 2x float32.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from linalign.align import stats as stats_lib
from linalign.align.lambdas import fold_of
from linalign.align.validate import check_pair


def _host_parts(z_b, z_a, shift_b, shift_a) -> stats_lib.HostStats:
    """Float64 statistics of one block of rows (two-pass: exact centring about its mean)."""
    x_b = np.asarray(z_b, np.float64) - shift_b
    x_a = np.asarray(z_a, np.float64) - shift_a
    m = x_b.shape[0]
    r_b, r_a = x_b.mean(axis=0), x_a.mean(axis=0)
    x_b -= r_b
    x_a -= r_a
    return stats_lib.HostStats(
        n=np.int64(m), mean_b=shift_b + r_b, mean_a=shift_a + r_a, c_bb=x_b.T @ x_b,
        c_ba=x_b.T @ x_a, ss_a=np.einsum("ij,ij->j", x_a, x_a),
        mean_b_lo=np.zeros_like(r_b), mean_a_lo=np.zeros_like(r_a))


class HostAccumulator:
    """Streams batches into float64 statistics with numpy on the host.

    Same interface as ``stats.Accumulator`` (``add``, ``stats``, ``rows_seen``); ``stats`` is
    a ``HostStats``.
    """

    def __init__(self, d_b: int, d_a: int, check_finite: bool = True,
                 chunk_rows: Optional[int] = None):
        if d_b <= 0 or d_a <= 0:
            raise stats_lib.AlignInputError(f"widths must be positive, got d_b={d_b}, d_a={d_a}")
        self.d_b, self.d_a = d_b, d_a
        self.dtype = np.dtype(np.float64)
        self.check_finite = check_finite
        self.chunk_rows = int(chunk_rows or stats_lib.CPU_CHUNK_ROWS)
        self._step_rows = self.chunk_rows
        self.rows_seen = 0
        self._stats = stats_lib.host_zeros(d_b, d_a)

    def add(self, z_b, z_a, mask=None, *, _checked: bool = False) -> "HostAccumulator":
        """Adds one batch ([m, d_b], [m, d_a], optional [m] 0/1 mask)."""
        if not _checked:
            z_b, z_a, mask = check_pair(z_b, z_a, d_b=self.d_b, d_a=self.d_a, mask=mask,
                                        allow_empty=True, check_finite=self.check_finite,
                                        row_offset=self.rows_seen)
        self.rows_seen += int(z_b.shape[0])
        if mask is not None:
            keep = np.flatnonzero(np.asarray(mask).astype(bool))
            z_b, z_a = np.asarray(z_b)[keep], np.asarray(z_a)[keep]
        for i in range(0, int(z_b.shape[0]), self.chunk_rows):
            s = self._stats
            blk_b, blk_a = z_b[i:i + self.chunk_rows], z_a[i:i + self.chunk_rows]
            # Shift by the running mean (the first block by its own): small centred values.
            sb, sa = ((s.mean_b, s.mean_a) if s.n else
                      (np.asarray(blk_b, np.float64).mean(0), np.asarray(blk_a, np.float64).mean(0)))
            self._stats = stats_lib.merge_host(s, _host_parts(blk_b, blk_a, sb, sa))
        return self

    @property
    def stats(self) -> stats_lib.HostStats:
        return self._stats


def _uses_host(dtype) -> bool:
    return np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64


class FoldedAccumulator:
    """One streaming pass, k SufficientStats: each row goes to the fold of its global index.

    Args:
      d_b, d_a: widths.
      folds: k (1 = no folds: a plain accumulator, no routing).
      seed: fold assignment seed (``fold_of``).
      dtype: "float32" (jax, default) or "float64" (numpy on the host unless jax_enable_x64).
      mesh, rules, chunk_rows: passed to each fold's ``stats.Accumulator``.
      check_finite: scan batches for NaN/Inf.
      row_offset: global index of the first row this accumulator will see (a process that
        reads rows [start, stop) of a dataset passes start, so folds match across processes).

    Example:
      acc = FoldedAccumulator(768, 1024, folds=5)
      for z_b, z_a in batches: acc.add(z_b, z_a)
      lam, info = choose_lambda(acc.fold_stats, "auto")
      W, b = solve(acc.stats, lam)
    """

    def __init__(self, d_b: int, d_a: int, folds: int = 5, seed: int = 0, *, dtype="float32",
                 mesh=None, rules=None, check_finite: bool = True,
                 chunk_rows: Optional[int] = None, row_offset: int = 0):
        if int(folds) < 1:
            raise ValueError(f"folds must be >= 1, got {folds}")
        self.d_b, self.d_a, self.k, self.seed = d_b, d_a, int(folds), int(seed)
        self.check_finite = check_finite
        if _uses_host(dtype):
            if mesh is not None:
                raise ValueError("float64 accumulation runs on the host; it takes no mesh")
            make = lambda: HostAccumulator(d_b, d_a, check_finite=False,  # noqa: E731
                                           chunk_rows=chunk_rows)
        else:
            make = lambda: stats_lib.Accumulator(d_b, d_a, mesh=mesh, rules=rules,  # noqa: E731
                                                 dtype=dtype, check_finite=False,
                                                 chunk_rows=chunk_rows)
        self.accs = [make() for _ in range(self.k)]
        self.dtype = self.accs[0].dtype
        self.rows_seen = int(row_offset)
        self._pending: list[list] = [[] for _ in range(self.k)]
        self._pending_rows = [0] * self.k

    def add(self, z_b, z_a, mask=None, row_index=None) -> "FoldedAccumulator":
        """Adds one batch of paired rows.

        Args:
          z_b: [m, d_b]; z_a: [m, d_a].
          mask: optional [m] 0/1 row weights (0 rows are skipped, e.g. held-out rows).
          row_index: optional [m] global row indices (default: consecutive from ``rows_seen``).

        Raises:
          AlignInputError: bad shapes/dtypes/NaN, naming the side and the global row.
        """
        z_b, z_a, mask = check_pair(z_b, z_a, d_b=self.d_b, d_a=self.d_a, mask=mask,
                                    allow_empty=True, check_finite=self.check_finite,
                                    row_offset=self.rows_seen)
        m = int(z_b.shape[0])
        if self.k == 1:
            self.accs[0].add(z_b, z_a, mask, _checked=True)
            self.rows_seen += m
            return self
        idx = (np.arange(self.rows_seen, self.rows_seen + m) if row_index is None
               else np.asarray(row_index).reshape(-1))
        if idx.shape != (m,):
            raise ValueError(f"row_index has shape {idx.shape}, expected ({m},)")
        fold = fold_of(idx, self.k, self.seed)
        if mask is not None:
            fold = np.where(np.asarray(mask).astype(bool), fold, -1)
        order = np.argsort(fold, kind="stable")
        bounds = np.searchsorted(fold[order], np.arange(-1, self.k + 1))
        for j in range(self.k):
            sel = order[bounds[j + 1]:bounds[j + 2]]
            if sel.size:
                self._push(j, z_b[sel], z_a[sel])
        self.rows_seen += m
        return self

    def _push(self, j: int, z_b, z_a) -> None:
        self._pending[j].append((z_b, z_a))
        self._pending_rows[j] += int(z_b.shape[0])
        step = self.accs[j]._step_rows
        if self._pending_rows[j] >= step:
            self._drain(j, whole_steps_only=True)

    def _drain(self, j: int, whole_steps_only: bool) -> None:
        if not self._pending[j]:
            return
        zb = np.concatenate([np.asarray(p[0]) for p in self._pending[j]])
        za = np.concatenate([np.asarray(p[1]) for p in self._pending[j]])
        step = self.accs[j]._step_rows
        cut = (len(zb) // step) * step if whole_steps_only else len(zb)
        if cut:
            self.accs[j].add(zb[:cut], za[:cut], _checked=True)
        rest = len(zb) - cut
        self._pending[j] = [(zb[cut:], za[cut:])] if rest else []
        self._pending_rows[j] = rest

    @property
    def fold_stats(self) -> list:
        """[k] statistics, one per fold (buffered rows flushed first)."""
        for j in range(self.k):
            self._drain(j, whole_steps_only=False)
        return [a.stats for a in self.accs]

    @property
    def stats(self):
        """Statistics of every row: the exact merge of the folds (host float64 when k > 1)."""
        folds = self.fold_stats
        return folds[0] if self.k == 1 else stats_lib.merge_all(folds)
