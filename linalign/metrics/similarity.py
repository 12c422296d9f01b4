"""Representational similarity between two sets of embeddings of the same n inputs.

  linear_cka     Kornblith et al. 2019, on mean-centred features.
  debiased_cka   CKA built on the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021),
                 which removes the small-n upward bias of linear CKA.
  svcca          Raghu et al. 2017: project each side on its top-k principal components, then
                 average the canonical correlations between the two subspaces.
  mutual_knn     Huh et al. 2024: mean fraction of shared k nearest neighbours (cosine).

All work in feature space (cost O(n d^2), memory O(d^2)) except mutual_knn, which needs the
n x n similarity matrix. Written here rather than taken from a library because none of the
pinned dependencies ships them as jittable functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from linalign.align.validate import AlignInputError, check_pair

_HIGHEST = jax.lax.Precision.HIGHEST


def _dot_t(a, b):
    """a^T b with full float32 precision on every backend."""
    return jnp.dot(a.T, b, precision=_HIGHEST)


def _prep(x, y, min_rows: int = 2):
    x, y, _ = check_pair(x, y)
    if x.shape[0] < min_rows:
        raise AlignInputError(f"need at least {min_rows} rows, got {x.shape[0]}")
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


@jax.jit
def _linear_cka(x_nd, y_ne):
    x = x_nd - jnp.mean(x_nd, axis=0)
    y = y_ne - jnp.mean(y_ne, axis=0)
    # ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) == tr(K H L H) / sqrt(tr(KHKH) tr(LHLH)).
    cross = jnp.sum(_dot_t(y, x) ** 2)
    return cross / (jnp.linalg.norm(_dot_t(x, x)) * jnp.linalg.norm(_dot_t(y, y)))


def linear_cka(x_nd, y_ne) -> jax.Array:
    """Linear CKA between [n, d] and [n, e] embeddings of the same inputs (in [0, 1]).

    Invariant to orthogonal transforms and isotropic scaling of either side; CKA(X, X) = 1.
    """
    return _linear_cka(*_prep(x_nd, y_ne))


def _hsic_u_terms(x, y):
    """Unbiased HSIC of linear kernels K = X X^T, L = Y Y^T without forming n x n matrices.

    With K~, L~ the kernels with zeroed diagonals:
      HSIC_u = [tr(K~ L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    """
    n = x.shape[0]
    kx = jnp.sum(x * x, axis=1)                       # diag K
    ky = jnp.sum(y * y, axis=1)                       # diag L
    tr_kl = jnp.sum(_dot_t(x, y) ** 2) - jnp.sum(kx * ky)
    sx, sy = jnp.sum(x, axis=0), jnp.sum(y, axis=0)
    k1 = jnp.dot(x, sx, precision=_HIGHEST) - kx      # K~ 1
    l1 = jnp.dot(y, sy, precision=_HIGHEST) - ky      # L~ 1
    one_k_one, one_l_one = jnp.sum(k1), jnp.sum(l1)
    return (tr_kl + one_k_one * one_l_one / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * jnp.dot(k1, l1, precision=_HIGHEST)) / (n * (n - 3))


@jax.jit
def _debiased_cka(x_nd, y_ne):
    # Centring leaves the unbiased HSIC unchanged in exact arithmetic and makes the feature-
    # space sums smaller, so float32 loses less to cancellation.
    x = x_nd - jnp.mean(x_nd, axis=0)
    y = y_ne - jnp.mean(y_ne, axis=0)
    return _hsic_u_terms(x, y) / jnp.sqrt(_hsic_u_terms(x, x) * _hsic_u_terms(y, y))


def debiased_cka(x_nd, y_ne) -> jax.Array:
    """CKA from the unbiased HSIC estimator (needs n >= 4). Can be slightly negative."""
    return _debiased_cka(*_prep(x_nd, y_ne, min_rows=4))


@functools.partial(jax.jit, static_argnames=("k",))
def _svcca(x_nd, y_ne, k):
    x = x_nd - jnp.mean(x_nd, axis=0)
    y = y_ne - jnp.mean(y_ne, axis=0)
    # The top-k principal-component scores U_k S_k span the same column space as U_k, and the
    # canonical correlations between two column spaces are the singular values of Ux^T Uy.
    ux = jnp.linalg.svd(x, full_matrices=False)[0][:, :k]
    uy = jnp.linalg.svd(y, full_matrices=False)[0][:, :k]
    rho = jnp.linalg.svd(_dot_t(ux, uy), compute_uv=False)
    return jnp.clip(rho, 0.0, 1.0)


def svcca(x_nd, y_ne, k: int, return_correlations: bool = False):
    """SVCCA similarity: mean canonical correlation between the top-k PC subspaces.

    Args:
      x_nd: [n, d] embeddings; y_ne: [n, e] embeddings of the same inputs.
      k: principal components kept on each side (k <= min(n - 1, d, e)).
      return_correlations: also return the k canonical correlations (descending).

    Returns:
      mean correlation in [0, 1] (and the [k] correlations if asked).
    """
    x, y = _prep(x_nd, y_ne)
    k = int(k)
    kmax = min(x.shape[0] - 1, x.shape[1], y.shape[1])
    if not 1 <= k <= kmax:
        raise ValueError(f"svcca: k={k} must be in [1, {kmax}] for n={x.shape[0]}, "
                         f"d={x.shape[1]}, e={y.shape[1]}")
    rho = _svcca(x, y, k)
    return (jnp.mean(rho), rho) if return_correlations else jnp.mean(rho)


@functools.partial(jax.jit, static_argnames=("k",))
def _mutual_knn(x_nd, y_ne, k):
    def knn(z):
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-30)
        sim = jnp.dot(z, z.T, precision=_HIGHEST)
        sim = jnp.where(jnp.eye(z.shape[0], dtype=bool), -jnp.inf, sim)  # a point is not its own neighbour
        return jax.lax.top_k(sim, k)[1]
    ix, iy = knn(x_nd), knn(y_ne)
    shared = jnp.sum(ix[:, :, None] == iy[:, None, :], axis=(1, 2))
    return jnp.mean(shared / k)


def mutual_knn(x_nd, y_ne, k: int = 10) -> jax.Array:
    """Mean over points of |kNN_X(i) and kNN_Y(i)| / k, neighbours by cosine similarity.

    Args:
      x_nd: [n, d]; y_ne: [n, e]; k: neighbours (1 <= k < n).
    """
    x, y = _prep(x_nd, y_ne)
    if not 1 <= int(k) < x.shape[0]:
        raise ValueError(f"mutual_knn: k={k} must be in [1, {x.shape[0] - 1}]")
    return _mutual_knn(x, y, int(k))


def shuffled_baseline(metric, x_nd, y_ne, seed: int = 0, **kw) -> float:
    """The metric with the rows of ``y`` permuted: the value unpaired embeddings reach."""
    perm = np.random.default_rng(seed).permutation(np.shape(y_ne)[0])
    return float(metric(x_nd, np.asarray(y_ne)[perm], **kw))
