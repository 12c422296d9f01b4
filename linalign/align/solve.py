"""Closed-form ridge solve from sufficient statistics, in float64 on the host.

  W = (C_bb + lam I)^-1 C_ba          [d_b, d_a]
  b = mean_a - mean_b W               [d_a]   (the bias by centring; it is not penalised)

The d_b x d_b system is small next to the data (d_b <= 8192), so it is always solved in
float64 with numpy/LAPACK on the host, whatever dtype the statistics were accumulated in. Real
models have a few "massive activation" dimensions hundreds to thousands of times larger than
the rest; their C_bb has a condition number far beyond float32, but its entries are accurate to
float32 precision each, and a Jacobi-scaled (unit-diagonal) float64 Cholesky solves it at the
paper's lambda = 1e-4 (tests/align/test_massive.py).

Two methods: "cholesky" (one factorisation, fastest for a single lambda) and "eigh"
(``RidgePath``: one eigendecomposition C_bb = V diag(s) V^T, then every lambda of a grid costs
O(d_b d_a): W(lam) = V diag(1/(s + lam)) V^T C_ba).

Optional per-dimension scaling (``scale``): the fit is done on z_b * scale (for example
``stats.std_scale``: unit variance per dimension), then undone exactly, W = diag(scale) W',
so the map applies to unscaled embeddings. It changes what the ridge penalises (each
dimension's variance no longer sets its share), not the predictions at lam = 0.

Refusing garbage (``SingularSystemError``):
  * lam = 0 with d_b > n - 1: the centred data has rank at most n - 1, C_bb is singular;
  * the Jacobi-scaled C_bb + lam I is numerically singular: its Cholesky fails or
    (max L_ii / min L_ii)^2, a lower bound on its condition number, exceeds 1 / (d_b * eps).
    eps is float64's for lam > 0, and the accumulation dtype's for lam = 0 (then nothing but
    the statistics' own digits tells the null space from the signal).
The message suggests a relative lambda that works ("rel:F", F * trace(C_bb)/d_b) and, when the
statistics were float32, float64 accumulation; never a lambda that swamps the data.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.linalg
from absl import logging

from linalign.align.stats import HostStats, scale_source, to_host64
from linalign.align.validate import AlignInputError, check_pair

METHODS = ("cholesky", "eigh")
ERROR_BOUND_FACTOR = 8.0
EPS64 = float(np.finfo(np.float64).eps)


class SingularSystemError(ValueError):
    """C_bb + lam I is singular (or numerically so)."""


def _check_stats(h: HostStats, lam: float) -> None:
    n = int(h.n)
    if n < 2:
        raise AlignInputError(f"need at least 2 rows to fit a centred map, got n={n}")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite non-negative number, got {lam!r}")
    if lam == 0 and h.d_b > n - 1:
        raise SingularSystemError(
            f"lam=0 with d_b={h.d_b} > n-1={n - 1}: the centred source data has rank at most "
            f"{n - 1}, so C_bb is singular. Use a small relative ridge, e.g. lam='rel:1e-6' "
            "(1e-6 of C_bb's mean eigenvalue: it only settles the null space), or more rows")


def _tol_eps(h: HostStats, lam: float) -> float:
    return float(np.finfo(h.acc_dtype).eps) if lam == 0 else EPS64


def _advice(h: HostStats, lam: float) -> str:
    # Smallest relative ridge that lifts the scaled spectrum above d_b * eps (the scaled
    # matrix's largest eigenvalue is at most d_b): F = 10 * d_b^2 * eps, rounded up to a decade.
    eps = _tol_eps(h, max(lam, 1e-300))
    f = 10.0 ** math.ceil(math.log10(10 * h.d_b ** 2 * eps))
    msg = f"use a relative ridge lam='rel:{f:g}' ({f:g} of C_bb's mean eigenvalue)"
    if h.acc_dtype != "float64":
        msg += ", or accumulate the statistics in float64 (dtype='float64')"
    return msg


def _scaled_factor(h: HostStats, lam: float):
    """Cholesky of the unit-diagonal C_bb + lam I; (factor, d) with A = D F F^T D, D = diag(d)."""
    a = h.c_bb + lam * np.eye(h.d_b)
    diag = np.diag(a).copy()
    if np.any(diag <= 0):
        j = int(np.flatnonzero(diag <= 0)[0])
        raise SingularSystemError(
            f"C_bb + lam*I is singular at lam={lam:g}: source dimension {j} is constant over the "
            f"rows; {_advice(h, lam)}")
    d = np.sqrt(diag)
    a /= d[:, None]
    a /= d[None, :]
    try:
        # numpy's LAPACK: scipy's bundled potrf measured 2.9 s against numpy's 0.04 s for
        # d = 768 on the 2-core development machine.
        chol = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise SingularSystemError(
            f"C_bb + lam*I is not positive definite at lam={lam:g} (float64 Cholesky failed); "
            f"{_advice(h, lam)}") from None
    ld = np.abs(np.diag(chol))
    eps = _tol_eps(h, lam)
    lb = (ld.max() / ld.min()) ** 2 if ld.min() > 0 else math.inf
    if lam == 0 and lb * h.d_b * eps <= 1:
        # Unregularised: the Cholesky bound can miss a null space hidden in rounding noise,
        # so take the exact condition number of the scaled matrix (same O(d^3) as the factor).
        ev = np.linalg.eigvalsh(a)
        lb = ev[-1] / ev[0] if ev[0] > 0 else math.inf
    if lb * h.d_b * eps > 1:
        raise SingularSystemError(
            f"C_bb + lam*I is numerically singular at lam={lam:g}: its scaled condition number "
            f"is >= {lb:.3g}, beyond 1/(d_b*eps)={1 / (h.d_b * eps):.3g} for "
            f"{'statistics accumulated in ' + h.acc_dtype if lam == 0 else 'float64'}; "
            f"{_advice(h, lam)}")
    if h.acc_dtype != "float64" and lb * h.d_b * float(np.finfo(h.acc_dtype).eps) > 1:
        logging.warning("lam=%g: scaled condition number >= %.3g exceeds 1/(d_b*eps) of the %s "
                        "statistics; the map is solved in float64 but its smallest directions "
                        "carry few digits (accumulate in float64 for more)", lam, lb, h.acc_dtype)
    return chol, d


def _chol_solve(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """(L L^T)^-1 rhs by two triangular solves."""
    y = scipy.linalg.solve_triangular(chol, rhs, lower=True, check_finite=False)
    return scipy.linalg.solve_triangular(chol.T, y, lower=False, check_finite=False)


def solve(stats, lam: float, method: str = "cholesky", scale=None):
    """Ridge solve W = (C_bb + lam I)^-1 C_ba, b = mean_a - mean_b W, in float64 on the host.

    Args:
      stats: SufficientStats (any accumulation dtype, any sharding) or HostStats.
      lam: ridge strength >= 0, on the scale of C_bb (a sum over rows, not an average); with
        ``scale``, on the scale of the scaled C_bb.
      method: "cholesky" or "eigh".
      scale: optional [d_b] per-dimension source scaling, undone exactly in W and b.

    Returns:
      (W [d_b, d_a], b [d_a]) float64 numpy arrays.

    Raises:
      SingularSystemError: see the module docstring.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    lam = float(lam)
    h0 = to_host64(stats)
    h = h0 if scale is None else scale_source(h0, scale)
    _check_stats(h, lam)
    if method == "eigh":
        w = RidgePath(h).weights(lam)
    else:
        chol, d = _scaled_factor(h, lam)
        w = _chol_solve(chol, h.c_ba / d[:, None]) / d[:, None]
    if scale is not None:
        w = w * np.asarray(scale, np.float64).reshape(-1)[:, None]
    b = h0.mean_a - h0.mean_b @ w
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise SingularSystemError(f"ridge solve produced non-finite values at lam={lam:g}")
    return w, b


class RidgePath:
    """One float64 eigendecomposition of C_bb, reused for a whole grid of ridge strengths.

    Args:
      stats: SufficientStats or HostStats (n >= 2).
    """

    def __init__(self, stats):
        h = to_host64(stats)
        _check_stats(h, 1.0)
        self.stats = h
        s, self.v = np.linalg.eigh(h.c_bb)
        # Rounding can make the smallest eigenvalues of a PSD matrix slightly negative.
        self.s = np.maximum(s, 0)
        self.g = self.v.T @ h.c_ba                                    # [d_b, d_a]
        self.s_min, self.s_max = float(self.s[0]), float(self.s[-1])
        self.d_b = h.d_b
        self.dtype = np.dtype(np.float64)

    def condition(self, lam: float) -> float:
        """kappa = (s_max + lam) / (s_min + lam) (inf if singular)."""
        den = self.s_min + lam
        return float("inf") if den <= 0 else (self.s_max + lam) / den

    def error_bound(self, lam: float) -> float:
        """Relative error bound of W from the float64 solve alone: 8 * kappa * eps64."""
        return ERROR_BOUND_FACTOR * self.condition(lam) * EPS64

    def ok(self, lam: float) -> bool:
        return self.s_min + lam > (self.s_max + lam) * self.d_b * _tol_eps(self.stats, lam)

    def check(self, lam: float) -> None:
        _check_stats(self.stats, float(lam))
        if not self.ok(lam):
            raise SingularSystemError(
                f"C_bb + lam*I is numerically singular at lam={lam:g}: its eigenvalues span "
                f"[{self.s_min + lam:.3g}, {self.s_max + lam:.3g}]; {_advice(self.stats, lam)}")

    def weights(self, lam: float) -> np.ndarray:
        """W [d_b, d_a] at ``lam`` (float64); raises SingularSystemError if singular."""
        self.check(lam)
        return self.v @ (self.g / (self.s + lam)[:, None])

    def solve(self, lam: float):
        """(W [d_b, d_a], b [d_a]) float64 at ``lam``."""
        w = self.weights(lam)
        return w, self.stats.mean_a - self.stats.mean_b @ w

    def _grid(self, grid: Sequence[float]) -> np.ndarray:
        g = np.asarray(grid, np.float64).reshape(-1)
        if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g < 0):
            raise ValueError(f"lambda grid must be non-empty, finite and >= 0, got {grid!r}")
        return g

    def _bad(self, g: np.ndarray) -> np.ndarray:
        return np.array([not self.ok(x) for x in g])

    def _rss_df(self, g: np.ndarray):
        g2 = np.sum(self.g * self.g, axis=1)                          # [d_b]
        sl = self.s[None, :] + g[:, None]                             # [L, d_b]
        with np.errstate(divide="ignore", invalid="ignore"):
            explained = np.sum((self.s[None, :] + 2 * g[:, None]) / sl ** 2 * g2[None, :], axis=1)
            df = np.sum(self.s[None, :] / sl, axis=1)
        return np.sum(self.stats.ss_a) - explained, df

    def train_rss(self, grid: Sequence[float]) -> np.ndarray:
        """Training residual sum of squares (all outputs) per lambda, from the statistics."""
        return self._rss_df(self._grid(grid))[0]

    def gcv(self, grid: Sequence[float]) -> np.ndarray:
        """Generalized cross-validation score per lambda (lower is better).

        GCV(lam) = n * RSS(lam) / (n - 1 - df(lam))^2 with df = sum_i s_i / (s_i + lam) (the
        extra 1 is the intercept). Numerically singular lambdas score +inf. The lambda policy
        never uses it when n <= d_b (``linalign.align.lambdas``).
        """
        g = self._grid(grid)
        if not np.all(np.isfinite(self.stats.ss_a)):
            raise ValueError("GCV needs the target sum of squares (ss_a), which these stats lack")
        rss, df = self._rss_df(g)
        n = float(self.stats.n)
        score = n * rss / np.maximum((n - 1 - df) ** 2, 1e-300)
        return np.where(self._bad(g) | (df >= n - 1), np.inf, score)

    def val_sse(self, val, grid: Sequence[float]) -> np.ndarray:
        """Squared error (summed over rows and outputs) on held-out rows, from their statistics.

        With the held-out rows' own moments (n_v, means m_b, m_a, C_bb^v, C_ba^v, C_aa^v) and
        the map W (centred on this path's training means mu_b, mu_a), each residual is
        (y~ - x~ W) + delta, x~, y~ centred on the held-out means and
        delta = (m_a - mu_a) - (m_b - mu_b) W; the cross terms vanish, so

          SSE = tr(C_aa^v) - 2 tr(W^T C_ba^v) + tr(W^T C_bb^v W) + n_v ||delta||^2.

        In the eigenbasis W = V D G (D = diag(1/(s + lam)), G = V^T C_ba), with
        H = V^T C_ba^v, K = V^T C_bb^v V, p = V^T (m_b - mu_b), e = m_a - mu_a:

          SSE = tr(C_aa^v) + n_v |e|^2 - 2 d.q + d^T M d,   d = 1/(s + lam)
          q = rowsum(G * H) + n_v p * (G e),   M = (K + n_v p p^T) * (G G^T)

        so each lambda costs O(d_b^2) after O(d_b^3) per held-out set. Numerically singular
        lambdas score +inf.

        Args:
          val: SufficientStats/HostStats of the held-out rows (needs ss_a).
          grid: [L] lambdas.

        Returns:
          [L] float64 squared errors.
        """
        g = self._grid(grid)
        v = to_host64(val)
        if (v.d_b, v.d_a) != (self.d_b, self.stats.d_a):
            raise AlignInputError(f"held-out statistics are [{v.d_b}, {v.d_a}], the path is "
                                  f"[{self.d_b}, {self.stats.d_a}]")
        if not np.all(np.isfinite(v.ss_a)):
            raise ValueError("held-out statistics lack the target sum of squares (ss_a)")
        nv = float(v.n)
        e = v.mean_a - self.stats.mean_a
        p = self.v.T @ (v.mean_b - self.stats.mean_b)
        h = self.v.T @ v.c_ba
        k = self.v.T @ v.c_bb @ self.v
        q = np.sum(self.g * h, axis=1) + nv * p * (self.g @ e)
        m = (k + nv * np.outer(p, p)) * (self.g @ self.g.T)
        c0 = float(np.sum(v.ss_a)) + nv * float(e @ e)
        dinv = 1.0 / (self.s[None, :] + g[:, None])                   # [L, d_b]
        sse = c0 - 2 * dinv @ q + np.einsum("li,ij,lj->l", dinv, m, dinv)
        return np.where(self._bad(g), np.inf, np.maximum(sse, 0))

    def val_mse(self, z_b_val, z_a_val, grid: Sequence[float]) -> np.ndarray:
        """Held-out mean squared error (per element) for each lambda, from held-out arrays."""
        from linalign.align.folded import HostAccumulator

        z_b_val, z_a_val, _ = check_pair(z_b_val, z_a_val, d_b=self.d_b, d_a=self.stats.d_a)
        val = HostAccumulator(self.d_b, self.stats.d_a).add(z_b_val, z_a_val, _checked=True).stats
        return self.val_sse(val, grid) / z_a_val.size


def default_lambda_grid(stats, num: int = 13, lo: float = 1e-6, hi: float = 1e2) -> np.ndarray:
    """Log-spaced lambdas scaled by the mean eigenvalue of C_bb (trace / d_b)."""
    from linalign.align.lambdas import default_grid

    return default_grid(stats, num, lo, hi)


def _best(grid, scores) -> tuple[float, np.ndarray]:
    g = np.asarray(grid, np.float64).reshape(-1)
    if not np.any(np.isfinite(scores)):
        raise SingularSystemError(f"every lambda in {list(g)} is numerically singular")
    return float(g[int(np.argmin(scores))]), scores


def select_lambda(stats_train, z_b_val, z_a_val, grid: Sequence[float]) -> tuple[float, np.ndarray]:
    """Picks the lambda with the lowest held-out MSE on held-out arrays.

    Returns:
      (best lambda, [len(grid)] held-out MSE per lambda).
    """
    return _best(grid, RidgePath(stats_train).val_mse(z_b_val, z_a_val, grid))


def select_lambda_gcv(stats, grid: Sequence[float]) -> tuple[float, np.ndarray]:
    """Picks the lambda with the lowest GCV score; returns (best lambda, scores)."""
    return _best(grid, RidgePath(stats).gcv(grid))


def select_lambda_kfold(fold_stats, grid: Sequence[float]) -> tuple[float, np.ndarray]:
    """Ridge strength by exact k-fold CV from per-fold statistics (one eigh per fold).

    Args:
      fold_stats: k SufficientStats, one per fold (``FoldedAccumulator.fold_stats``).
      grid: candidate lambdas (absolute).

    Returns:
      (best lambda, [len(grid)] held-out squared error summed over folds).
    """
    from linalign.align.lambdas import kfold_sse

    return _best(grid, kfold_sse(fold_stats, grid).sum(axis=0))


def train_r2(stats, w, b=None) -> float:
    """Training R^2 (pooled over outputs) of the map (W, b) on the rows behind ``stats``.

    Computed from the statistics, no pass over the data:
    RSS = tr(C_aa) - 2 tr(W^T C_ba) + tr(W^T C_bb W) + n ||b - (mean_a - mean_b W)||^2.
    ``b=None`` means the centred bias.
    """
    h = to_host64(stats)
    w = np.asarray(w, np.float64)
    tss = float(np.sum(h.ss_a))
    rss = tss - 2 * float(np.sum(w * h.c_ba)) + float(np.sum(w * (h.c_bb @ w)))
    if b is not None:
        off = np.asarray(b, np.float64) - (h.mean_a - h.mean_b @ w)
        rss += float(h.n) * float(off @ off)
    return 1 - rss / tss


__all__ = ["SingularSystemError", "solve", "RidgePath", "default_lambda_grid", "select_lambda",
           "select_lambda_gcv", "select_lambda_kfold", "train_r2"]
