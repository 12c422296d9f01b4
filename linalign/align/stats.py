"""Streamed sufficient statistics for the centred ridge regression Z_B W + 1 b^T ~ Z_A.

Everything the closed-form fit needs is a handful of moments of the paired embeddings:

  n                 number of rows seen
  mean_b [d_b]      mean of the source embeddings
  mean_a [d_a]      mean of the target embeddings
  c_bb [d_b, d_b]   centred sum of squares  sum_i (z_b,i - mean_b)^T (z_b,i - mean_b)
  c_ba [d_b, d_a]   centred cross products  sum_i (z_b,i - mean_b)^T (z_a,i - mean_a)
  ss_a [d_a]        centred sum of squares of the target, per column (diagonal of C_aa);
                    cheap, and it gives training R^2 and GCV without another pass

Numerics: each batch's products are formed about a shift close to its mean (the running mean
of the rows before it; the first batch uses its own mean), corrected to its exact mean, and
batches are combined with Chan et al.'s pairwise update (the matrix form of Welford's
algorithm):

  n = n1 + n2,  delta = mean2 - mean1,  mean = mean1 + delta * n2 / n
  C = C1 + C2 + (n1 n2 / n) delta_b^T delta_a

which is exact in exact arithmetic and keeps float32 accurate when the data's mean is far
from zero (forming Z^T Z and subtracting n mu mu^T would lose about log10(mu^2/var) digits).
``merge`` is the same update, so statistics from separate workers combine exactly. Running
means are carried in compensated (hi + lo) form; see ``_merge_parts``.

Sharding: ``Accumulator`` takes an optional ``jax.sharding.Mesh``; batch rows are split over
the rules' ``batch`` mesh axis and reduced by the compiler, and the d_b rows of C_bb / C_ba
can be split over a ``model`` axis so each device holds only its slice of the accumulators.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from linalign.align import sharding as shd
from linalign.align.validate import AlignInputError, check_pair

_HIGHEST = jax.lax.Precision.HIGHEST


@flax.struct.dataclass
class SufficientStats:
    """Centred moments of paired embeddings (a pytree; see module docstring).

    Attributes:
      n: [] int32 rows seen.
      mean_b: [d_b] source mean.
      mean_a: [d_a] target mean.
      c_bb: [d_b, d_b] centred source sum of squares (symmetric PSD).
      c_ba: [d_b, d_a] centred cross products.
      ss_a: [d_a] centred per-column target sum of squares (diag of C_aa).
      mean_b_lo, mean_a_lo: low-order parts of the means (true mean = mean + mean_lo).
        Compensated (TwoSum) running means: when |mean| >> spread, a mean rounded to one ulp
        would otherwise put a first-order error into every later merge's between-group term.
    """

    n: jax.Array
    mean_b: jax.Array
    mean_a: jax.Array
    c_bb: jax.Array
    c_ba: jax.Array
    ss_a: jax.Array
    mean_b_lo: jax.Array
    mean_a_lo: jax.Array

    @property
    def d_b(self) -> int:
        return int(self.mean_b.shape[0])

    @property
    def d_a(self) -> int:
        return int(self.mean_a.shape[0])

    @property
    def dtype(self):
        return self.c_bb.dtype


def _stat_axes():
    """Logical axes of each SufficientStats leaf, in field order."""
    return SufficientStats(
        n=(), mean_b=(None,), mean_a=(None,), c_bb=(shd.FEAT_B, shd.FEAT_B2),
        c_ba=(shd.FEAT_B, shd.FEAT_A), ss_a=(None,), mean_b_lo=(None,), mean_a_lo=(None,))


def stats_shardings(mesh: Mesh, rules: Optional[shd.ShardingRules] = None) -> SufficientStats:
    """NamedSharding for each leaf of SufficientStats under ``rules`` on ``mesh``."""
    rules = rules or shd.ShardingRules()
    return jax.tree.map(lambda ax: rules.sharding(mesh, ax), _stat_axes(),
                        is_leaf=lambda x: isinstance(x, tuple))


def _zeros(d_b: int, d_a: int, dtype) -> SufficientStats:
    return SufficientStats(
        n=jnp.zeros((), jnp.int32), mean_b=jnp.zeros((d_b,), dtype), mean_a=jnp.zeros((d_a,), dtype),
        c_bb=jnp.zeros((d_b, d_b), dtype), c_ba=jnp.zeros((d_b, d_a), dtype),
        ss_a=jnp.zeros((d_a,), dtype), mean_b_lo=jnp.zeros((d_b,), dtype),
        mean_a_lo=jnp.zeros((d_a,), dtype))


def init_stats(d_b: int, d_a: int, dtype=jnp.float32, sharding: Any = None) -> SufficientStats:
    """Zero statistics (n = 0).

    Args:
      d_b: source width.
      d_a: target width.
      dtype: accumulator dtype (float32 default; float64 needs jax_enable_x64).
      sharding: None (default device), a ``Mesh`` (leaves laid out by the default
        ShardingRules), or a SufficientStats of shardings (from ``stats_shardings``).

    Returns:
      SufficientStats created directly in its final layout (explicit out_shardings, so a large
      C_bb is never materialised whole on one device first).
    """
    if d_b <= 0 or d_a <= 0:
        raise AlignInputError(f"widths must be positive, got d_b={d_b}, d_a={d_a}")
    if isinstance(sharding, Mesh):
        sharding = stats_shardings(sharding)
    make = functools.partial(_zeros, d_b, d_a, dtype)
    if sharding is None:
        return jax.jit(make)()
    return jax.jit(make, out_shardings=sharding)()


def from_moments(n, mean_b, mean_a, c_bb, c_ba, ss_a=None) -> SufficientStats:
    """Builds statistics from moments computed elsewhere (e.g. a cross-product received over
    a protocol). ``ss_a`` may be omitted (then training R^2 / GCV are unavailable: NaN).

    float64 numpy moments give ``HostStats`` (float64 kept for the solve: without
    jax_enable_x64, jax arrays would round them to float32); anything else SufficientStats.
    """
    if (isinstance(c_bb, np.ndarray) and isinstance(c_ba, np.ndarray) and c_bb.dtype == np.float64
            and not jax.config.jax_enable_x64):
        f = lambda x: np.asarray(x, np.float64)  # noqa: E731
        mb, ma = f(mean_b).reshape(-1), f(mean_a).reshape(-1)
        sa = np.full(ma.shape, np.nan) if ss_a is None else f(ss_a)
        if c_bb.shape != (mb.size, mb.size) or c_ba.shape != (mb.size, ma.size) or sa.shape != ma.shape:
            raise AlignInputError(
                f"inconsistent moment shapes: mean_b {mb.shape}, mean_a {ma.shape}, "
                f"c_bb {c_bb.shape}, c_ba {c_ba.shape}, ss_a {sa.shape}")
        return HostStats(np.int64(n), mb, ma, f(c_bb), f(c_ba), sa, np.zeros_like(mb),
                         np.zeros_like(ma), acc_dtype="float64")
    mean_b = jnp.asarray(mean_b)
    if ss_a is None:
        ss_a = jnp.full(jnp.shape(mean_a), jnp.nan, mean_b.dtype)
    s = SufficientStats(n=jnp.asarray(n, jnp.int32), mean_b=mean_b, mean_a=jnp.asarray(mean_a),
                        c_bb=jnp.asarray(c_bb), c_ba=jnp.asarray(c_ba), ss_a=jnp.asarray(ss_a),
                        mean_b_lo=jnp.zeros_like(mean_b), mean_a_lo=jnp.zeros_like(jnp.asarray(mean_a)))
    d_b, d_a = s.mean_b.shape[0], s.mean_a.shape[0]
    if s.c_bb.shape != (d_b, d_b) or s.c_ba.shape != (d_b, d_a) or s.ss_a.shape != (d_a,):
        raise AlignInputError(
            f"inconsistent moment shapes: mean_b {s.mean_b.shape}, mean_a {s.mean_a.shape}, "
            f"c_bb {s.c_bb.shape}, c_ba {s.c_ba.shape}, ss_a {s.ss_a.shape}")
    return s


def _two_sum(hi, t, lo):
    """(hi + t + lo) as a rounded sum plus its exact rounding error (Knuth's TwoSum)."""
    s = hi + t
    bb = s - hi
    low = ((hi - (s - bb)) + (t - bb)) + lo
    # Renormalise (Fast2Sum, |s| >= |low|) so the high part alone is the correctly rounded mean.
    s2 = s + low
    return s2, low - (s2 - s)


def _merge_parts(s1: SufficientStats, n2, base_b, r_b, base_a, r_a, c_bb, c_ba, ss_a) -> SufficientStats:
    """Chan merge of ``s1`` with a group whose mean is ``base + r`` (r small).

    Keeping the group mean split as base + r lets the mean difference be formed as
    (base - mean1) + r: base and mean1 are close, so their difference is exact in floating
    point, and the small correction r keeps its own precision. Forming delta from a rounded
    group mean instead costs a first-order error when |mean| >> spread.
    """
    dtype = s1.c_bb.dtype
    n1 = s1.n.astype(dtype)
    n2f = n2.astype(dtype)
    n = n1 + n2f
    n_safe = jnp.maximum(n, 1)
    w2 = n2f / n_safe                # weight of the second mean
    cross = n1 * n2f / n_safe        # weight of the between-group term
    # base - mean1 is exact (close numbers, or mean1 = 0), so the mean difference is carried
    # as (exact high part, small low part) until the mean itself is updated.
    dh_b, dl_b = base_b - s1.mean_b, r_b - s1.mean_b_lo
    dh_a, dl_a = base_a - s1.mean_a, r_a - s1.mean_a_lo
    d_b, d_a = dh_b + dl_b, dh_a + dl_a
    mean_b, mean_b_lo = _two_sum(s1.mean_b, dh_b * w2, s1.mean_b_lo + dl_b * w2)
    mean_a, mean_a_lo = _two_sum(s1.mean_a, dh_a * w2, s1.mean_a_lo + dl_a * w2)
    return SufficientStats(
        n=(s1.n + n2).astype(jnp.int32),
        mean_b=mean_b,
        mean_a=mean_a,
        mean_b_lo=mean_b_lo,
        mean_a_lo=mean_a_lo,
        c_bb=s1.c_bb + c_bb + cross * jnp.outer(d_b, d_b),
        c_ba=s1.c_ba + c_ba + cross * jnp.outer(d_b, d_a),
        ss_a=s1.ss_a + ss_a + cross * d_a * d_a,
    )


def merge(s1: SufficientStats, s2: SufficientStats) -> SufficientStats:
    """Exact pairwise combination of two sets of statistics (Chan et al.).

    Associative and commutative up to rounding; either side may have n = 0.
    """
    return _merge_parts(s1, s2.n, s2.mean_b, s2.mean_b_lo, s2.mean_a, s2.mean_a_lo,
                        s2.c_bb, s2.c_ba, s2.ss_a)


def _batch_mean(z_b, z_a, mask, dtype):
    """(mean_b, mean_a) of the unmasked rows (zeros if there are none)."""
    z_b, z_a = z_b.astype(dtype), z_a.astype(dtype)
    if mask is None:
        return jnp.mean(z_b, axis=0), jnp.mean(z_a, axis=0)
    w_m = mask.astype(dtype)
    inv = 1.0 / jnp.maximum(jnp.sum(w_m), 1)
    return (jnp.dot(w_m, z_b, precision=_HIGHEST) * inv, jnp.dot(w_m, z_a, precision=_HIGHEST) * inv)


def _batch_parts(z_b, z_a, mask, dtype, shift_b, shift_a):
    """Moments of one batch, formed about a shift close to its mean.

    The shift is the batch's own mean (``batch_stats``) or the running mean of everything
    before it (``update``: no extra pass over the batch, and after the first batch the
    running mean is as close to the batch mean as the data allows). The batch's mean is
    shift + r; r and the row sums come out of the same matmul as the cross products, through a
    trailing column of ones (or of the mask) on the source side, so the batch is read once for
    centring and once by the matmuls.

    Returns:
      (n, shift_b, r_b, shift_a, r_a, c_bb, c_ba, ss_a), scatters about the batch mean.
    """
    z_b = z_b.astype(dtype)
    z_a = z_a.astype(dtype)
    if mask is None:
        n = jnp.asarray(z_b.shape[0], jnp.int32)
        w_m1 = jnp.ones((z_b.shape[0], 1), dtype)
        x_b = z_b - shift_b
        x_a = z_a - shift_a
        sq_a = jnp.sum(x_a * x_a, axis=0)
    else:
        n = jnp.sum(mask.astype(jnp.int32))
        w_m1 = mask.astype(dtype)[:, None]
        # Zeroing masked rows on the source side is enough for every product below.
        x_b = (z_b - shift_b) * w_m1
        x_a = z_a - shift_a
        sq_a = jnp.sum(x_a * x_a * w_m1, axis=0)
    x_b1 = jnp.concatenate([x_b, w_m1], axis=1)                        # [m, d_b + 1]
    g_bb = jnp.einsum("mi,mj->ij", x_b1, x_b, precision=_HIGHEST)      # [d_b + 1, d_b]
    g_ba = jnp.einsum("mi,mj->ij", x_b1, x_a, precision=_HIGHEST)      # [d_b + 1, d_a]
    nf = n.astype(dtype)
    inv = 1.0 / jnp.maximum(nf, 1)
    r_b, r_a = g_bb[-1] * inv, g_ba[-1] * inv                          # batch mean - shift
    c_bb = g_bb[:-1] - nf * jnp.outer(r_b, r_b)
    c_ba = g_ba[:-1] - nf * jnp.outer(r_b, r_a)
    ss_a = sq_a - nf * r_a * r_a
    return n, shift_b, r_b, shift_a, r_a, c_bb, c_ba, ss_a


def batch_stats(z_b: jax.Array, z_a: jax.Array, mask: Optional[jax.Array] = None,
                dtype=jnp.float32) -> SufficientStats:
    """Statistics of one batch, centred on the batch's own mean.

    Args:
      z_b: [m, d_b] source embeddings.
      z_a: [m, d_a] target embeddings.
      mask: optional [m] 0/1 row weights (padding or held-out rows are 0).
      dtype: computation dtype.

    Returns:
      SufficientStats of the (unmasked) rows.
    """
    shift_b, shift_a = _batch_mean(z_b, z_a, mask, dtype)
    n, base_b, r_b, base_a, r_a, c_bb, c_ba, ss_a = _batch_parts(z_b, z_a, mask, dtype,
                                                                 shift_b, shift_a)
    mean_b, mean_b_lo = _two_sum(base_b, r_b, jnp.zeros_like(r_b))
    mean_a, mean_a_lo = _two_sum(base_a, r_a, jnp.zeros_like(r_a))
    return SufficientStats(n=n, mean_b=mean_b, mean_a=mean_a, c_bb=c_bb, c_ba=c_ba, ss_a=ss_a,
                           mean_b_lo=mean_b_lo, mean_a_lo=mean_a_lo)


def _update(stats: SufficientStats, z_b, z_a, mask=None) -> SufficientStats:
    dtype = stats.c_bb.dtype
    # Shift by the running mean; only the very first batch pays a pass for its own mean.
    shift_b, shift_a = jax.lax.cond(
        stats.n > 0, lambda: (stats.mean_b, stats.mean_a),
        lambda: _batch_mean(z_b, z_a, mask, dtype))
    return _merge_parts(stats, *_batch_parts(z_b, z_a, mask, dtype, shift_b, shift_a))


# The accumulator buffers are donated so the update reuses them in place.
update = jax.jit(_update, donate_argnums=0)
_merge_host_parts = jax.jit(_merge_parts, donate_argnums=0)


def _host_parts(z_b: np.ndarray, z_a: np.ndarray, mask: Optional[np.ndarray], shift_b, shift_a):
    """``_batch_parts`` computed with numpy's BLAS (float32), for the CPU backend.

    Same centring (about the running mean), same outputs. numpy hands ``x.T @ x`` to BLAS's
    symmetric rank-k update (syrk), which computes one triangle of the Gram matrix: half the
    flops of the X^T X product that XLA's CPU dot computes in full. Measured in
    ``experiments/bench_fit.py`` (BUILD_NOTES.md).
    """
    x_b = np.subtract(z_b, shift_b, dtype=np.float32)
    x_a = np.subtract(z_a, shift_a, dtype=np.float32)
    if mask is None:
        n = x_b.shape[0]
        s_b, s_a = x_b.sum(0), x_a.sum(0)
        sq_a = np.einsum("mj,mj->j", x_a, x_a)
    else:
        w = np.asarray(mask, np.float32)
        n = int(np.count_nonzero(w))
        x_b *= w[:, None]  # zeroing masked rows on the source side is enough for the products
        s_b, s_a = x_b.sum(0), w @ x_a
        sq_a = w @ (x_a * x_a)
    g_bb = x_b.T @ x_b
    g_ba = x_b.T @ x_a
    inv = np.float32(1.0 / max(n, 1))
    r_b, r_a = s_b * inv, s_a * inv
    nf = np.float32(n)
    c_bb = g_bb - nf * np.outer(r_b, r_b)
    c_ba = g_ba - nf * np.outer(r_b, r_a)
    ss_a = sq_a - nf * r_a * r_a
    return np.int32(n), shift_b, r_b, shift_a, r_a, c_bb, c_ba, ss_a
update.__doc__ = """Adds a batch to the statistics (jitted; ``stats`` is donated, do not reuse it).

Args:
  stats: running SufficientStats.
  z_b: [m, d_b] source embeddings.
  z_a: [m, d_a] target embeddings.
  mask: optional [m] 0/1 row weights.

Returns:
  the merged SufficientStats. Inputs are not validated here (hot path); ``Accumulator.add``
  validates on the host.
"""


def _to_host(x) -> np.ndarray:
    """Host copy of one leaf, gathered across processes when it is not fully addressable."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


STAT_FIELDS = ("n", "mean_b", "mean_a", "c_bb", "c_ba", "ss_a", "mean_b_lo", "mean_a_lo")


def stats_to_numpy(stats: SufficientStats) -> dict[str, np.ndarray]:
    """Host copies of every field, as a dict of numpy arrays.

    Works for statistics on one device, sharded over a mesh, or spread over several processes
    (leaves that are not fully addressable are all-gathered, so every process must call it).
    """
    return {k: _to_host(getattr(stats, k)) for k in STAT_FIELDS}


def to_host64(stats: SufficientStats) -> SufficientStats:
    """Statistics as float64 numpy leaves on the host (the compensated means folded in).

    Host statistics are what the solve and the lambda policy work on: the d x d system is
    small, and float64 keeps the massive-activation dimensions of real models from swamping
    the rest, whatever dtype the accumulation used. ``dtype`` of the result stays float64;
    ``acc_dtype`` records the accumulation's.
    """
    if isinstance(stats, HostStats):
        return stats
    d = stats_to_numpy(stats)
    f = lambda k: np.asarray(d[k], np.float64)  # noqa: E731
    return HostStats(n=np.int64(d["n"]), mean_b=f("mean_b") + f("mean_b_lo"),
                     mean_a=f("mean_a") + f("mean_a_lo"), c_bb=f("c_bb"), c_ba=f("c_ba"),
                     ss_a=f("ss_a"), mean_b_lo=np.zeros_like(f("mean_b")),
                     mean_a_lo=np.zeros_like(f("mean_a")), acc_dtype=np.dtype(d["c_bb"].dtype).name)


@dataclasses.dataclass(frozen=True)
class HostStats:
    """SufficientStats on the host in float64 numpy (same fields; see ``to_host64``).

    Attributes:
      acc_dtype: dtype the statistics were accumulated in ("float32" or "float64"); it bounds
        how many digits they carry, which the singularity check at lam = 0 respects.
    """

    n: np.int64
    mean_b: np.ndarray
    mean_a: np.ndarray
    c_bb: np.ndarray
    c_ba: np.ndarray
    ss_a: np.ndarray
    mean_b_lo: np.ndarray
    mean_a_lo: np.ndarray
    acc_dtype: str = "float64"

    d_b = property(lambda self: int(self.mean_b.shape[0]))
    d_a = property(lambda self: int(self.mean_a.shape[0]))
    dtype = property(lambda self: np.dtype(np.float64))


def host_zeros(d_b: int, d_a: int) -> HostStats:
    z = np.zeros
    return HostStats(np.int64(0), z(d_b), z(d_a), z((d_b, d_b)), z((d_b, d_a)), z(d_a), z(d_b), z(d_a))


def merge_host(s1: HostStats, s2: HostStats) -> HostStats:
    """Chan et al.'s exact merge in float64 on the host (either side may have n = 0)."""
    n1, n2 = int(s1.n), int(s2.n)
    n = n1 + n2
    if n2 == 0 or n1 == 0:
        return s1 if n2 == 0 else dataclasses.replace(
            s2, acc_dtype=_wider(s1.acc_dtype, s2.acc_dtype))
    db, da = s2.mean_b - s1.mean_b, s2.mean_a - s1.mean_a
    cross = n1 * n2 / n
    return HostStats(
        n=np.int64(n), mean_b=s1.mean_b + db * (n2 / n), mean_a=s1.mean_a + da * (n2 / n),
        c_bb=s1.c_bb + s2.c_bb + cross * np.outer(db, db),
        c_ba=s1.c_ba + s2.c_ba + cross * np.outer(db, da),
        ss_a=s1.ss_a + s2.ss_a + cross * da * da, mean_b_lo=s1.mean_b_lo, mean_a_lo=s1.mean_a_lo,
        acc_dtype=_wider(s1.acc_dtype, s2.acc_dtype))


def _wider(a: str, b: str) -> str:
    """The less precise of two accumulation dtypes (the merge carries no more digits)."""
    return a if np.finfo(a).eps >= np.finfo(b).eps else b


def merge_all(stats_list) -> HostStats:
    """Exact merge of any number of statistics (device or host), in float64 on the host."""
    hosts = [to_host64(s) for s in stats_list]
    if not hosts:
        raise ValueError("merge_all needs at least one SufficientStats")
    # Pairwise tree: rounding grows with log(k), not k.
    while len(hosts) > 1:
        hosts = [merge_host(hosts[i], hosts[i + 1]) if i + 1 < len(hosts) else hosts[i]
                 for i in range(0, len(hosts), 2)]
    return hosts[0]


def scale_source(stats, scale) -> HostStats:
    """Statistics of (z_b * scale, z_a): per-dimension source scaling, exactly, from moments.

    A map fitted on the scaled source, W', becomes diag(scale) W' for the original one, with
    the same predictions (``linalign.align.solve.solve(..., scale=...)`` undoes it).
    """
    h = to_host64(stats)
    s = np.asarray(scale, np.float64).reshape(-1)
    if s.shape != (h.d_b,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale must be [{h.d_b}] finite and > 0, got shape {s.shape}")
    return dataclasses.replace(h, mean_b=h.mean_b * s, c_bb=h.c_bb * s[:, None] * s[None, :],
                               c_ba=h.c_ba * s[:, None])


def std_scale(stats) -> np.ndarray:
    """[d_b] 1 / (per-dimension standard deviation), 1 for constant dimensions."""
    h = to_host64(stats)
    var = np.diag(h.c_bb) / max(int(h.n), 1)
    return np.where(var > 0, 1.0 / np.sqrt(np.where(var > 0, var, 1.0)), 1.0)


def from_arrays(z_b, z_a, mask=None, dtype=jnp.float32, batch_size: Optional[int] = None) -> SufficientStats:
    """Statistics of whole arrays (validated), optionally streamed in batches.

    Args:
      z_b: [n, d_b] source embeddings.
      z_a: [n, d_a] target embeddings, same rows.
      mask: optional [n] 0/1 row weights.
      dtype: accumulator dtype.
      batch_size: rows per update; None: one shot.
    """
    # Full check up front, so nothing is accumulated from an input that turns out bad.
    z_b, z_a, mask = check_pair(z_b, z_a, mask=mask)
    acc = Accumulator(z_b.shape[1], z_a.shape[1], dtype=dtype)
    n = z_b.shape[0]
    step = batch_size or n
    for i in range(0, n, step):
        acc.add(z_b[i:i + step], z_a[i:i + step], None if mask is None else mask[i:i + step],
                _checked=True)
    return acc.stats


CPU_CHUNK_ROWS = 2048
ACCEL_CHUNK_ROWS = 65536
HOST_BLAS_CHUNK_ROWS = 8192


class Accumulator:
    """Streams batches into SufficientStats, on one device or over a mesh.

    Args:
      d_b: source width.
      d_a: target width.
      mesh: optional Mesh; rows of each batch are split over ``rules.batch`` and the d_b rows
        of the accumulators over ``rules.feat_b`` when the mesh has those axes.
      rules: ShardingRules (default: batch->"data", feat_b->"model").
      dtype: accumulator dtype.
      check_finite: scan each batch on the host for NaN/Inf (names the first bad row).
      chunk_rows: rows per step over all devices (rounded up to a multiple of the data-axis
        size); larger batches are split and merged exactly. Default: 2048 on CPU, 65536 on
        accelerators. Small steps keep each step's temporaries (the centred
        batch) below glibc's 32 MB mmap threshold, so the allocator reuses them instead of
        page-faulting fresh memory every step; on CPU that was ~20-30% of a step at
        8192 x (768 + 1024) float32 rows (see docs/notes/align.md).
      host_blas: compute each batch's products with numpy's BLAS (``_host_parts``) and merge
        them in JAX. Default: on for one CPU device with float32 statistics (BLAS's syrk
        computes one triangle of Z_B^T Z_B), off otherwise; chunks are then at least 8192
        rows.

    Example:
      acc = Accumulator(768, 1024)
      for z_b, z_a in batches: acc.add(z_b, z_a)
      W, b = solve(acc.stats, lam=1e-2)
    """

    def __init__(self, d_b: int, d_a: int, mesh: Optional[Mesh] = None,
                 rules: Optional[shd.ShardingRules] = None, dtype=jnp.float32,
                 check_finite: bool = True, chunk_rows: Optional[int] = None,
                 host_blas: Optional[bool] = None):
        self.d_b, self.d_a = d_b, d_a
        self.mesh = mesh
        self.rules = rules or shd.ShardingRules()
        self.dtype = jnp.dtype(dtype)
        self.check_finite = check_finite
        if chunk_rows is None:
            platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
            chunk_rows = CPU_CHUNK_ROWS if platform == "cpu" else ACCEL_CHUNK_ROWS
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self.chunk_rows = int(chunk_rows)
        # One CPU device, float32: the batch products run in numpy's BLAS (``_host_parts``),
        # the merge stays in JAX. A mesh, an accelerator or another dtype uses the jitted step.
        eligible = (mesh is None and self.dtype == jnp.float32
                    and jax.devices()[0].platform == "cpu")
        if host_blas and not eligible:
            raise ValueError("host_blas needs one CPU device (no mesh) and float32 statistics")
        self.host_blas = eligible if host_blas is None else bool(host_blas)
        self.rows_seen = 0
        self._stats = None
        self._build()

    def _build(self):
        if self.mesh is None:
            self._stats = init_stats(self.d_b, self.d_a, self.dtype)
            self._update = update
            self._row_multiple = 1
            return
        out_sh = stats_shardings(self.mesh, self.rules)
        self._stats = init_stats(self.d_b, self.d_a, self.dtype, sharding=out_sh)
        rows_sh = self.rules.sharding(self.mesh, (shd.BATCH, None))
        mask_sh = self.rules.sharding(self.mesh, (shd.BATCH,))
        self._in_shardings = (rows_sh, mask_sh)
        self._update = jax.jit(_update, in_shardings=(out_sh, rows_sh, rows_sh, mask_sh),
                               out_shardings=out_sh, donate_argnums=0)
        spec = rows_sh.spec[0]
        axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
        self._row_multiple = int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1

    def add(self, z_b, z_a, mask=None, *, _checked: bool = False) -> "Accumulator":
        """Adds one batch of paired rows.

        Args:
          z_b: [m, d_b] source embeddings (numpy or jax).
          z_a: [m, d_a] target embeddings.
          mask: optional [m] 0/1 (or bool) row weights; 0 rows are ignored.

        Raises:
          AlignInputError: bad shape/dtype/NaN, naming the side and the global row index.
        """
        if not _checked:
            z_b, z_a, mask = check_pair(z_b, z_a, d_b=self.d_b, d_a=self.d_a, mask=mask,
                                        allow_empty=True, check_finite=self.check_finite,
                                        row_offset=self.rows_seen)
        m = int(z_b.shape[0])
        self.rows_seen += m
        step = self._step_rows
        for i in range(0, m, step):
            self._add_chunk(z_b[i:i + step], z_a[i:i + step], None if mask is None else mask[i:i + step])
        return self

    @property
    def _step_rows(self) -> int:
        """Rows per compiled step: chunk_rows rounded up to a multiple of the data axis."""
        if self.host_blas:
            return max(self.chunk_rows, HOST_BLAS_CHUNK_ROWS)
        return -(-self.chunk_rows // self._row_multiple) * self._row_multiple

    def _add_chunk(self, z_b, z_a, mask) -> None:
        m = int(z_b.shape[0])
        if self.host_blas:
            if mask is not None and not np.any(mask):
                return
            s = self._stats
            if int(s.n) > 0:
                shift_b, shift_a = np.asarray(s.mean_b), np.asarray(s.mean_a)
            else:  # the first batch is centred on its own mean
                w = None if mask is None else np.asarray(mask, bool)
                zb = np.asarray(z_b) if w is None else np.asarray(z_b)[w]
                za = np.asarray(z_a) if w is None else np.asarray(z_a)[w]
                shift_b = zb.mean(0, dtype=np.float32)
                shift_a = za.mean(0, dtype=np.float32)
            parts = _host_parts(np.asarray(z_b), np.asarray(z_a), mask, shift_b, shift_a)
            self._stats = _merge_host_parts(s, *parts)
            return
        # Every step has the same shape (short chunks are padded with masked rows), so one
        # compiled update serves a whole stream, whatever its batch sizes.
        pad = self._step_rows - m
        mask = np.ones((m,), np.bool_) if mask is None else np.asarray(mask).astype(np.bool_)
        if pad:
            xp = jnp if isinstance(z_b, jax.Array) else np
            z_b = xp.concatenate([z_b, xp.zeros((pad, self.d_b), z_b.dtype)])
            xp = jnp if isinstance(z_a, jax.Array) else np
            z_a = xp.concatenate([z_a, xp.zeros((pad, self.d_a), z_a.dtype)])
            mask = np.concatenate([mask, np.zeros((pad,), np.bool_)])
        if self.mesh is None:
            self._stats = self._update(self._stats, z_b, z_a, jnp.asarray(mask))
            return
        rows_sh, mask_sh = self._in_shardings
        z_b = jax.device_put(z_b, rows_sh)
        z_a = jax.device_put(z_a, rows_sh)
        mask = jax.device_put(mask, mask_sh)
        self._stats = self._update(self._stats, z_b, z_a, mask)

    @property
    def stats(self) -> SufficientStats:
        """Current statistics (a fresh reference; safe to keep after further ``add`` calls)."""
        # The next update donates the buffers, so hand out a copy.
        return jax.tree.map(jnp.copy, self._stats)
