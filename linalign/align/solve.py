"""Closed-form ridge solve from SufficientStats, and lambda selection over a grid.

  W = (C_bb + lam I)^-1 C_ba          [d_b, d_a]
  b = mean_a - mean_b W               [d_a]   (the bias by centring; it is not penalised)

Two methods: "cholesky" (one factorisation per lambda, fastest for a single lambda) and
"eigh" (``RidgePath``: one eigendecomposition C_bb = V diag(s) V^T, then every lambda of a grid
costs O(d_b d_a): W(lam) = V diag(1/(s + lam)) V^T C_ba).

Refusing garbage: with lam = 0 a rank-deficient C_bb (for example d_b >= n, where the centred
data has rank at most n - 1) raises ``SingularSystemError``; so does any lambda for which
C_bb + lam I is numerically singular in the working dtype, i.e. its smallest eigenvalue is
below ``d_b * eps * largest`` (numpy's matrix_rank rule).

float32 error: the solve's relative error is about ``kappa * eps`` with
kappa = (s_max + lam) / (s_min + lam) and eps = 1.19e-7 (the statistics themselves, being
centred per batch, add only a few eps). ``RidgePath.error_bound(lam)`` returns
``8 * kappa * eps``, the bound tests check against a float64 reference; see docs/notes/align.md.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from linalign.align.stats import SufficientStats, from_arrays
from linalign.align.validate import AlignInputError, check_pair

_HIGHEST = jax.lax.Precision.HIGHEST
METHODS = ("cholesky", "eigh")
ERROR_BOUND_FACTOR = 8.0


class SingularSystemError(ValueError):
    """C_bb + lam I is singular (or numerically so) in the working precision."""


def _check_stats(stats: SufficientStats, lam: float) -> None:
    n = int(stats.n)
    if n < 2:
        raise AlignInputError(f"need at least 2 rows to fit a centred map, got n={n}")
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite non-negative number, got {lam!r}")
    if lam == 0 and stats.d_b > n - 1:
        raise SingularSystemError(
            f"lam=0 with d_b={stats.d_b} > n-1={n - 1}: the centred source data has rank at most "
            f"{n - 1}, so C_bb is singular; use a ridge lam > 0 (or more rows)")


def _rank_tol(d: int, dtype) -> float:
    return d * float(jnp.finfo(dtype).eps)


def _singular_msg(lam, s_min, s_max, d, dtype) -> str:
    tol = _rank_tol(d, dtype)
    return (f"C_bb + lam*I is numerically singular in {jnp.dtype(dtype).name} at lam={lam:g}: "
            f"its eigenvalues span [{s_min:.3g}, {s_max:.3g}] (lam included), a ratio below "
            f"d_b*eps={tol:.2g}, so the smallest directions are rounding noise. Use "
            f"lam >= {10 * tol * s_max:.3g} (10 * d_b * eps * largest eigenvalue), or accumulate "
            "in float64")


@jax.jit
def _chol_solve(c_bb, c_ba, mean_b, mean_a, lam):
    d = c_bb.shape[0]
    a = c_bb + lam * jnp.eye(d, dtype=c_bb.dtype)
    chol = jnp.linalg.cholesky(a)
    w = jax.scipy.linalg.cho_solve((chol, True), c_ba)
    b = mean_a - jnp.dot(mean_b, w, precision=_HIGHEST)
    return w, b, jnp.diagonal(chol)


def solve(stats: SufficientStats, lam: float, method: str = "cholesky"):
    """Ridge solve W = (C_bb + lam I)^-1 C_ba, b = mean_a - mean_b W.

    Args:
      stats: accumulated SufficientStats (float32 or float64).
      lam: ridge strength >= 0, on the scale of C_bb (a sum over rows, not an average).
      method: "cholesky" or "eigh".

    Returns:
      (W [d_b, d_a], b [d_a]) in the stats' dtype.

    Raises:
      SingularSystemError: lam = 0 with a rank-deficient C_bb, or C_bb + lam I numerically
        singular in the working dtype.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    lam = float(lam)
    _check_stats(stats, lam)
    if method == "eigh" or lam == 0:
        # lam = 0 always goes through the eigenvalues: the rank check must be reliable there.
        path = RidgePath(stats)
        if method == "eigh":
            return path.solve(lam)
        path.check(lam)
    w, b, diag = _chol_solve(stats.c_bb, stats.c_ba, stats.mean_b, stats.mean_a,
                             jnp.asarray(lam, stats.dtype))
    diag = np.asarray(diag)
    # (max L_ii / min L_ii)^2 is a lower bound on the condition number: cheap and catches the
    # cases Cholesky "succeeds" on a matrix that is singular to working precision.
    if not np.all(np.isfinite(diag)) or np.min(diag) <= 0:
        raise SingularSystemError(
            f"Cholesky of C_bb + lam*I failed at lam={lam:g} (not positive definite in "
            f"{jnp.dtype(stats.dtype).name}); increase lam")
    lb = (np.max(diag) / np.min(diag)) ** 2
    if lb * _rank_tol(stats.d_b, stats.dtype) > 1:
        # The trace bounds the largest eigenvalue from above, so the suggested lam suffices.
        s_max = float(jnp.trace(stats.c_bb)) + lam
        raise SingularSystemError(
            f"C_bb + lam*I is numerically singular in {jnp.dtype(stats.dtype).name} at "
            f"lam={lam:g}: condition number >= {lb:.3g} exceeds 1/(d_b*eps)="
            f"{1 / _rank_tol(stats.d_b, stats.dtype):.3g}. Use lam >= "
            f"{10 * _rank_tol(stats.d_b, stats.dtype) * s_max:.3g}, or accumulate in float64")
    if not (np.all(np.isfinite(np.asarray(w))) and np.all(np.isfinite(np.asarray(b)))):
        raise SingularSystemError(f"ridge solve produced non-finite values at lam={lam:g}")
    return w, b


@jax.jit
def _eigh_parts(c_bb, c_ba):
    s, v = jnp.linalg.eigh(c_bb)
    # Rounding can make the smallest eigenvalues of a PSD matrix slightly negative.
    s = jnp.maximum(s, 0)
    g = jnp.dot(v.T, c_ba, precision=_HIGHEST)
    return s, v, g


@jax.jit
def _path_weights(s, v, g, mean_b, mean_a, lam):
    w = jnp.dot(v, g / (s + lam)[:, None], precision=_HIGHEST)
    return w, mean_a - jnp.dot(mean_b, w, precision=_HIGHEST)


@jax.jit
def _path_rss(s, g, ss_a, lams):
    g2 = jnp.sum(g * g, axis=1)                                       # [d_b]
    sl = s[None, :] + lams[:, None]                                   # [L, d_b]
    explained = jnp.sum((s[None, :] + 2 * lams[:, None]) / sl**2 * g2[None, :], axis=1)
    df = jnp.sum(s[None, :] / sl, axis=1)
    return jnp.sum(ss_a) - explained, df


@jax.jit
def _val_moments(v, g, mean_b, mean_a, z_b, z_a):
    p = jnp.dot(z_b - mean_b, v, precision=_HIGHEST)                  # [n, d_b] eigen-coords
    y = z_a - mean_a                                                  # [n, d_a]
    q = jnp.sum(jnp.dot(p.T, y, precision=_HIGHEST) * g, axis=1)      # [d_b]  <P^T Y, G>_row
    k = jnp.dot(p.T, p, precision=_HIGHEST) * jnp.dot(g, g.T, precision=_HIGHEST)  # [d_b, d_b]
    return jnp.sum(y * y), q, k


@jax.jit
def _val_sse(s, yy, q, k, lams):
    def one(lam):
        dinv = 1.0 / (s + lam)
        return yy - 2 * jnp.dot(dinv, q) + jnp.dot(dinv, jnp.dot(k, dinv, precision=_HIGHEST))
    return jax.lax.map(one, lams)


class RidgePath:
    """One eigendecomposition of C_bb, reused for a whole grid of ridge strengths.

    Args:
      stats: SufficientStats (n >= 2).
    """

    def __init__(self, stats: SufficientStats):
        _check_stats(stats, 1.0)
        self.stats = stats
        self.s, self.v, self.g = _eigh_parts(stats.c_bb, stats.c_ba)
        s_np = np.asarray(self.s)
        self.s_min, self.s_max = float(s_np[0]), float(s_np[-1])
        self.d_b = stats.d_b
        self.dtype = stats.dtype

    def condition(self, lam: float) -> float:
        """kappa = (s_max + lam) / (s_min + lam) (inf if singular)."""
        den = self.s_min + lam
        return float("inf") if den <= 0 else (self.s_max + lam) / den

    def error_bound(self, lam: float) -> float:
        """Relative Frobenius error bound of W in the working dtype: 8 * kappa * eps."""
        return ERROR_BOUND_FACTOR * self.condition(lam) * float(jnp.finfo(self.dtype).eps)

    def ok(self, lam: float) -> bool:
        return self.s_min + lam > (self.s_max + lam) * _rank_tol(self.d_b, self.dtype)

    def check(self, lam: float) -> None:
        _check_stats(self.stats, float(lam))
        if not self.ok(lam):
            raise SingularSystemError(_singular_msg(lam, self.s_min + lam, self.s_max + lam,
                                                    self.d_b, self.dtype))

    def solve(self, lam: float):
        """(W [d_b, d_a], b [d_a]) at ``lam``; raises SingularSystemError if singular."""
        self.check(lam)
        return _path_weights(self.s, self.v, self.g, self.stats.mean_b, self.stats.mean_a,
                             jnp.asarray(lam, self.dtype))

    def _grid(self, grid: Sequence[float]) -> np.ndarray:
        g = np.asarray(grid, np.float64).reshape(-1)
        if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g < 0):
            raise ValueError(f"lambda grid must be non-empty, finite and >= 0, got {grid!r}")
        return g

    def train_rss(self, grid: Sequence[float]) -> np.ndarray:
        """Training residual sum of squares (all outputs) per lambda, from the statistics."""
        g = self._grid(grid)
        rss, _ = _path_rss(self.s, self.g, self.stats.ss_a, jnp.asarray(g, self.dtype))
        return np.asarray(rss, np.float64)

    def gcv(self, grid: Sequence[float]) -> np.ndarray:
        """Generalized cross-validation score per lambda (lower is better).

        GCV(lam) = n * RSS(lam) / (n - 1 - df(lam))^2 with df = sum_i s_i / (s_i + lam) (the
        extra 1 is the intercept). Numerically singular lambdas score +inf.
        """
        g = self._grid(grid)
        if not np.all(np.isfinite(np.asarray(self.stats.ss_a))):
            raise ValueError("GCV needs the target sum of squares (ss_a), which these stats lack")
        rss, df = _path_rss(self.s, self.g, self.stats.ss_a, jnp.asarray(g, self.dtype))
        n = float(self.stats.n)
        den = (n - 1 - np.asarray(df, np.float64)) ** 2
        score = n * np.asarray(rss, np.float64) / np.maximum(den, 1e-300)
        bad = np.array([not self.ok(x) for x in g]) | (np.asarray(df) >= n - 1)
        return np.where(bad, np.inf, score)

    def val_mse(self, z_b_val, z_a_val, grid: Sequence[float]) -> np.ndarray:
        """Held-out mean squared error (per element) for each lambda.

        Uses moments of the held-out set in the eigenbasis, so the cost is two matmuls over the
        held-out rows plus O(d_b^2) per lambda, instead of a full prediction per lambda.
        Numerically singular lambdas score +inf.
        """
        g = self._grid(grid)
        z_b_val, z_a_val, _ = check_pair(z_b_val, z_a_val, d_b=self.d_b, d_a=self.stats.d_a)
        yy, q, k = _val_moments(self.v, self.g, self.stats.mean_b, self.stats.mean_a,
                                jnp.asarray(z_b_val, self.dtype), jnp.asarray(z_a_val, self.dtype))
        sse = np.asarray(_val_sse(self.s, yy, q, k, jnp.asarray(g, self.dtype)), np.float64)
        mse = np.maximum(sse, 0) / z_a_val.size
        bad = np.array([not self.ok(x) for x in g])
        return np.where(bad, np.inf, mse)


def default_lambda_grid(stats: SufficientStats, num: int = 13, lo: float = 1e-6,
                        hi: float = 1e2) -> np.ndarray:
    """Log-spaced lambdas scaled by the mean eigenvalue of C_bb (trace / d_b)."""
    scale = float(jnp.trace(stats.c_bb)) / stats.d_b
    return scale * np.logspace(np.log10(lo), np.log10(hi), num)


def select_lambda(stats_train: SufficientStats, z_b_val, z_a_val,
                  grid: Sequence[float]) -> tuple[float, np.ndarray]:
    """Picks the lambda with the lowest held-out MSE.

    Args:
      stats_train: statistics of the training rows only.
      z_b_val: [n_val, d_b] held-out source embeddings.
      z_a_val: [n_val, d_a] held-out target embeddings.
      grid: candidate lambdas.

    Returns:
      (best lambda, [len(grid)] held-out MSE per lambda).
    """
    path = RidgePath(stats_train)
    scores = path.val_mse(z_b_val, z_a_val, grid)
    if not np.any(np.isfinite(scores)):
        raise SingularSystemError(f"every lambda in {list(grid)} is numerically singular")
    return float(np.asarray(grid, np.float64).reshape(-1)[int(np.argmin(scores))]), scores


def select_lambda_gcv(stats: SufficientStats, grid: Sequence[float]) -> tuple[float, np.ndarray]:
    """Picks the lambda with the lowest GCV score; returns (best lambda, scores)."""
    scores = RidgePath(stats).gcv(grid)
    if not np.any(np.isfinite(scores)):
        raise SingularSystemError(f"every lambda in {list(grid)} is numerically singular")
    return float(np.asarray(grid, np.float64).reshape(-1)[int(np.argmin(scores))]), scores


CV_FOLDS = 5


def select_lambda_kfold(z_b_nd, z_a_nd, grid, k: int = CV_FOLDS, seed: int = 0):
    """Ridge strength by k-fold cross-validation (held-out squared error summed over folds).

    Each fold's map is fit on the other folds' rows (one eigendecomposition per fold, reused
    for the whole grid through ``RidgePath.val_mse``).

    Args:
      z_b_nd: [n, d_b] source rows; z_a_nd: [n, d_a] target rows.
      grid: candidate lambdas (absolute).
      k: folds (at most n).
      seed: fold assignment seed.

    Returns:
      (best lambda, [len(grid)] summed held-out squared error per lambda).
    """
    n = len(z_b_nd)
    if n < 2 * k:
        raise ValueError(f"{k}-fold cross-validation needs at least {2 * k} rows, got {n}")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    sse = np.zeros(len(grid))
    for f in folds:
        keep = np.ones(n, bool)
        keep[f] = False
        path = RidgePath(from_arrays(z_b_nd[keep], z_a_nd[keep]))
        sse += path.val_mse(z_b_nd[f], z_a_nd[f], grid) * z_a_nd[f].size
    if not np.any(np.isfinite(sse)):
        raise SingularSystemError(f"every lambda in {list(grid)} is numerically singular")
    return float(np.asarray(grid, np.float64)[int(np.argmin(sse))]), sse


def train_r2(stats: SufficientStats, w, b=None) -> float:
    """Training R^2 (pooled over outputs) of the map (W, b) on the rows behind ``stats``.

    Computed from the statistics, no pass over the data:
    RSS = tr(C_aa) - 2 tr(W^T C_ba) + tr(W^T C_bb W) + n ||b - (mean_a - mean_b W)||^2.
    ``b=None`` means the centred bias.
    """
    w = jnp.asarray(w, stats.dtype)
    tss = jnp.sum(stats.ss_a)
    rss = tss - 2 * jnp.sum(w * stats.c_ba) + jnp.sum(w * jnp.dot(stats.c_bb, w, precision=_HIGHEST))
    if b is not None:
        off = jnp.asarray(b, stats.dtype) - (stats.mean_a - jnp.dot(stats.mean_b, w, precision=_HIGHEST))
        rss = rss + stats.n.astype(stats.dtype) * jnp.sum(off * off)
    return float(1 - rss / tss)
