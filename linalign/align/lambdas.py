"""The one lambda policy every fit uses: parse what the user asked, choose the ridge strength.

Specs (``LambdaSpec.parse``):

  "auto"      exact k-fold cross-validation (k = 5) from per-fold statistics (the default)
  "cv:K"      the same with K folds (K must be the number of folds accumulated)
  "gcv"       generalised cross-validation on the total statistics; never used when n <= d_b
              (the centred C_bb is then rank-deficient and GCV picks lambdas far too small, see
              docs/notes/eval.md): falls back to k-fold CV, with the reason logged and recorded
  1e-4, "1e-4"  a fixed absolute lambda, on the scale of C_bb (a sum over rows)
  "rel:F"     F * trace(C_bb) / d_b: F times the mean eigenvalue, so one number means the same
              thing for every model and row count

Folds are fixed by ``fold_of``: a hash of each row's global index, so the same row lands in the
same fold on every process and in every run, whatever the batching. Accumulation keeps one
SufficientStats per fold (``linalign.align.folded.FoldedAccumulator``); the total is their exact
merge, and fold j's training statistics are the merge of the other folds. Fold j's held-out
squared error for every lambda of a grid then follows from fold j's own statistics and one
eigendecomposition of its training C_bb (``RidgePath.val_sse``), so CV costs k eighs and no
second pass over the rows. Everything here runs in float64 on the host.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import numpy as np
from absl import logging

CV_FOLDS = 5
GRID_NUM, GRID_LO, GRID_HI = 13, 1e-6, 1e2

# splitmix64 constants (Steele et al.): a cheap bijective mixer of 64-bit integers.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of uint64 ``x`` (wrapping arithmetic)."""
    off = np.uint64((int(seed) * int(_GOLDEN) + int(_GOLDEN)) % (1 << 64))
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) + off
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def fold_of(global_row_index, k: int, seed: int = 0) -> np.ndarray:
    """Fold of each row, from a hash of its global row index (identical on every process).

    Rows are taken in blocks of k consecutive indices; within a block the folds are a
    permutation given by the ranks of the rows' hashes. So a row's fold depends on its index
    alone, any k consecutive rows fill every fold once (n rows give folds of n // k or
    n // k + 1 rows, even for tiny n), and the order inside each block is random.

    Args:
      global_row_index: [m] non-negative integer row indices (position in the whole dataset).
      k: number of folds (>= 1).
      seed: changes the assignment.

    Returns:
      [m] int64 folds in [0, k).
    """
    if int(k) < 1:
        raise ValueError(f"number of folds must be >= 1, got {k}")
    k = int(k)
    idx = np.asarray(global_row_index)
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0):
        raise ValueError("fold_of needs non-negative integer row indices")
    idx = idx.astype(np.int64).reshape(-1)
    if k == 1:
        return np.zeros(idx.shape, np.int64)
    members = (idx // k)[:, None] * k + np.arange(k)[None, :]            # [m, k] the block
    h = _mix(members, seed)
    own = h[np.arange(idx.size), idx % k]
    # Rank of the row's hash within its block (hashes of distinct indices are distinct:
    # splitmix64 is a bijection).
    return np.sum(h < own[:, None], axis=1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class LambdaSpec:
    """What the user asked for.

    Attributes:
      kind: "cv", "gcv", "fixed" or "rel".
      value: the absolute lambda (fixed) or the fraction F (rel); None otherwise.
      folds: K for "cv" (None: as many folds as were accumulated).
      text: the spec as written (recorded in map metadata as ``lam_spec``).
    """

    kind: str
    value: Optional[float] = None
    folds: Optional[int] = None
    text: str = "auto"

    @classmethod
    def parse(cls, x: Union[str, float, int, "LambdaSpec", None]) -> "LambdaSpec":
        """Parses "auto", "cv", "cv:K", "gcv", "rel:F" or a number (float or numeric string)."""
        if isinstance(x, LambdaSpec):
            return x
        if x is None or (isinstance(x, str) and x.strip().lower() == "auto"):
            return cls("cv", None, None, "auto")
        if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
            return cls._fixed(float(x), repr(float(x)))
        if not isinstance(x, str):
            raise ValueError(f"lambda must be a number or a string spec, got {type(x).__name__}")
        s = x.strip().lower()
        if s == "gcv":
            return cls("gcv", None, None, "gcv")
        if s == "cv" or s.startswith("cv:"):
            k = None
            if s.startswith("cv:"):
                try:
                    k = int(s[3:])
                except ValueError:
                    raise ValueError(f"bad lambda spec {x!r}: 'cv:K' needs an integer K") from None
                if k < 2:
                    raise ValueError(f"bad lambda spec {x!r}: cross-validation needs K >= 2")
            return cls("cv", None, k, s)
        if s.startswith("rel:"):
            try:
                f = float(s[4:])
            except ValueError:
                raise ValueError(f"bad lambda spec {x!r}: 'rel:F' needs a number F") from None
            if not math.isfinite(f) or f < 0:
                raise ValueError(f"bad lambda spec {x!r}: F must be finite and >= 0")
            return cls("rel", f, None, s)
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"lam must be a number, 'gcv', 'cv' or 'auto'; got {x!r} (also "
                             "accepted: 'cv:K', 'rel:F')") from None
        return cls._fixed(v, x.strip())

    @classmethod
    def _fixed(cls, v: float, text: str) -> "LambdaSpec":
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"lambda must be a finite number >= 0, got {v!r}")
        return cls("fixed", v, None, text)

    @property
    def needs_folds(self) -> bool:
        """Whether this spec may need per-fold statistics ("gcv" may fall back to k-fold)."""
        return self.kind in ("cv", "gcv")

    def __str__(self) -> str:
        return self.text


def mean_eigenvalue(stats) -> float:
    """trace(C_bb) / d_b of (host or device) statistics: the scale of relative lambdas."""
    return float(np.trace(np.asarray(stats.c_bb, np.float64))) / stats.d_b


def default_grid(total, num: int = GRID_NUM, lo: float = GRID_LO, hi: float = GRID_HI) -> np.ndarray:
    """Log-spaced absolute lambdas: mean eigenvalue of C_bb times logspace(lo, hi, num)."""
    return mean_eigenvalue(total) * np.logspace(np.log10(lo), np.log10(hi), num)


def _check_folds(hosts, k_asked: Optional[int]) -> None:
    k = len(hosts)
    n = sum(int(h.n) for h in hosts)
    if k_asked is not None and k_asked != k:
        raise ValueError(f"lambda spec asks for {k_asked}-fold CV but the statistics were "
                         f"accumulated in {k} folds; accumulate with folds={k_asked}")
    if k < 2:
        raise ValueError("k-fold cross-validation needs per-fold statistics (at least 2 folds); "
                         "accumulate with folds=5, or give a fixed lambda ('1e-4', 'rel:1e-3')")
    if k > n:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} rows, got {n}: use fewer "
                         "folds or a fixed lambda")
    empty = [j for j, h in enumerate(hosts) if int(h.n) == 0]
    if empty:
        raise ValueError(f"{k}-fold cross-validation: fold(s) {empty} received no rows out of {n} "
                         "(folds come from a hash of the row index); use fewer folds")
    short = [j for j, h in enumerate(hosts) if n - int(h.n) < 2]
    if short:
        raise ValueError(f"{k}-fold cross-validation: fold(s) {short} leave fewer than 2 training "
                         f"rows out of {n}; use fewer folds")


def kfold_sse(fold_stats: Sequence, grid: Sequence[float], scale=None) -> np.ndarray:
    """Exact k-fold held-out squared error per lambda, from per-fold statistics.

    Fold j's map is the ridge fit on the merge of the other folds' statistics; its squared
    error on fold j's rows follows from fold j's moments (see ``RidgePath.val_sse``).

    Args:
      fold_stats: k SufficientStats (device or host), one per fold.
      grid: [L] absolute lambdas.
      scale: optional [d_b] per-dimension source scaling applied before the fit.

    Returns:
      [k, L] float64 squared errors (summed over rows and outputs); +inf where the training
      system of a fold is numerically singular at that lambda.
    """
    from linalign.align import stats as stats_lib

    hosts = [stats_lib.to_host64(s) for s in fold_stats]
    if scale is not None:
        hosts = [stats_lib.scale_source(h, scale) for h in hosts]
    _check_folds(hosts, None)
    return _kfold_hosts(hosts, np.asarray(grid, np.float64).reshape(-1))


def _kfold_hosts(hosts, grid: np.ndarray) -> np.ndarray:
    from linalign.align.solve import RidgePath
    from linalign.align import stats as stats_lib

    out = np.empty((len(hosts), grid.size))
    for j in range(len(hosts)):
        train = stats_lib.merge_all([h for i, h in enumerate(hosts) if i != j])
        out[j] = RidgePath(train).val_sse(hosts[j], grid)
    return out


def choose_lambda(fold_stats, spec="auto", *, grid: Optional[Sequence[float]] = None,
                  scale=None) -> tuple[float, dict]:
    """Chooses the ridge strength.

    Args:
      fold_stats: list of per-fold SufficientStats (one element, or a bare SufficientStats,
        when no folds were accumulated; then only "fixed", "rel" and "gcv" with n > d_b work).
      spec: a LambdaSpec or anything ``LambdaSpec.parse`` accepts.
      grid: absolute lambdas to search (default ``default_grid`` of the total statistics).
      scale: optional [d_b] per-dimension source scaling (the fit is done on z_b * scale);
        relative lambdas and the default grid then refer to the scaled C_bb.

    Returns:
      (lam, info): lam the absolute value to pass to ``solve`` (with the same ``scale``);
      info has "lam_spec", "lam_selection" ("kfold-K", "gcv", "fixed", "fixed-relative") and,
      when a grid was searched, "grid" and "scores" (summed held-out squared error for k-fold,
      the GCV score for GCV), "folds" and "fold_rows"; "gcv_refused" names why GCV fell back.
    """
    from linalign.align.solve import RidgePath, SingularSystemError
    from linalign.align import stats as stats_lib

    spec = LambdaSpec.parse(spec)
    if not isinstance(fold_stats, (list, tuple)):
        fold_stats = [fold_stats]
    hosts = [stats_lib.to_host64(s) for s in fold_stats]
    if scale is not None:
        hosts = [stats_lib.scale_source(h, scale) for h in hosts]
    total = stats_lib.merge_all(hosts)
    n, d_b = int(total.n), total.d_b
    if n < 2:
        raise ValueError(f"need at least 2 rows to fit a centred map, got n={n}")
    info: dict = {"lam_spec": spec.text}
    if spec.kind == "fixed":
        info["lam_selection"] = "fixed"
        return float(spec.value), info
    if spec.kind == "rel":
        lam = float(spec.value) * mean_eigenvalue(total)
        info.update(lam_selection="fixed-relative", lam_rel=float(spec.value))
        return lam, info
    grid = np.asarray(default_grid(total) if grid is None else grid, np.float64).reshape(-1)
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise ValueError(f"lambda grid must be non-empty, finite and >= 0, got {grid!r}")
    info["grid"] = [float(x) for x in grid]
    kind = spec.kind
    if kind == "gcv" and n <= d_b:
        reason = (f"GCV is not used when n <= d_b (n={n}, d_b={d_b}): C_bb is rank-deficient "
                  "and GCV selects lambdas far too small")
        if len(hosts) < 2:
            raise ValueError(reason + "; accumulate per-fold statistics (folds=5) for k-fold CV "
                             "or give a fixed lambda such as 'rel:1e-3'")
        logging.warning("%s; using %d-fold CV instead", reason, len(hosts))
        info["gcv_refused"] = reason
        kind = "cv"
    if kind == "gcv":
        scores = RidgePath(total).gcv(grid)
        info["lam_selection"] = "gcv"
    else:
        _check_folds(hosts, spec.folds)
        scores = _kfold_hosts(hosts, grid).sum(axis=0)
        info.update(lam_selection=f"kfold-{len(hosts)}", folds=len(hosts),
                    fold_rows=[int(h.n) for h in hosts])
    if not np.any(np.isfinite(scores)):
        raise SingularSystemError(
            f"every lambda of the grid [{grid[0]:.3g} .. {grid[-1]:.3g}] is numerically singular")
    info["scores"] = [float(x) for x in scores]
    lam = float(grid[int(np.argmin(scores))])
    if lam in (grid[0], grid[-1]) and grid.size > 1:
        logging.warning("selected lambda %.3g is at the edge of the grid; consider a wider grid", lam)
    logging.info("lambda %.4g chosen by %s (spec %s)", lam, info["lam_selection"], spec.text)
    return lam, info
