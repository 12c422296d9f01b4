"""Similarity metrics against direct float64 reference formulas, plus invariances."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from linalign import metrics
from linalign.align import AlignInputError


def _xy(n=120, d=16, e=12, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 3.0
    y = x @ rng.normal(size=(d, e)) + noise * rng.normal(size=(n, e)) - 1.0
    return x.astype(np.float32), y.astype(np.float32)


def _ref_cka(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _ref_hsic_u(k, l):
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def _ref_debiased(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    k, l = x @ x.T, y @ y.T  # uncentred on purpose: the estimator is shift invariant
    return _ref_hsic_u(k, l) / np.sqrt(_ref_hsic_u(k, k) * _ref_hsic_u(l, l))


def _ref_svcca(x, y, k):
    def pcs(z):
        z = z.astype(np.float64) - z.mean(0)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        return z @ vt[:k].T  # PC scores
    a, b = pcs(x), pcs(y)
    # Classical CCA: singular values of Saa^{-1/2} Sab Sbb^{-1/2}.
    def inv_sqrt(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(w ** -0.5) @ v.T
    m = inv_sqrt(a.T @ a) @ a.T @ b @ inv_sqrt(b.T @ b)
    return np.linalg.svd(m, compute_uv=False)


def _ref_knn(x, y, k):
    def sets(z):
        z = z.astype(np.float64)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        s = z @ z.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in s]
    return np.mean([len(a & b) / k for a, b in zip(sets(x), sets(y))])


def test_linear_cka_reference():
    x, y = _xy()
    np.testing.assert_allclose(float(metrics.linear_cka(x, y)), _ref_cka(x, y), rtol=1e-5, atol=1e-6)


def test_debiased_cka_reference_and_smaller_than_biased_for_unrelated():
    x, y = _xy(n=60)
    np.testing.assert_allclose(float(metrics.debiased_cka(x, y)), _ref_debiased(x, y), rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
    # Independent data: biased CKA is inflated at small n, the debiased estimate sits near 0.
    assert float(metrics.linear_cka(a, b)) > 0.3
    assert abs(float(metrics.debiased_cka(a, b))) < 0.1
    np.testing.assert_allclose(float(metrics.debiased_cka(a, b)), _ref_debiased(a, b), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("k", [4, 10])
def test_svcca_reference(k):
    x, y = _xy(noise=2.0)
    mean, rho = metrics.svcca(x, y, k, return_correlations=True)
    ref = _ref_svcca(x, y, k)
    np.testing.assert_allclose(np.asarray(rho), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(mean), ref.mean(), rtol=1e-4, atol=1e-5)


def test_mutual_knn_reference():
    x, y = _xy(noise=3.0)
    np.testing.assert_allclose(float(metrics.mutual_knn(x, y, k=5)), _ref_knn(x, y, 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fn", [metrics.linear_cka, metrics.debiased_cka,
                                lambda a, b: metrics.svcca(a, b, 6),
                                lambda a, b: metrics.mutual_knn(a, b, 5)])
def test_self_similarity_is_one(fn):
    x, _ = _xy()
    np.testing.assert_allclose(float(fn(x, x)), 1.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fn", [metrics.linear_cka, metrics.debiased_cka,
                                lambda a, b: metrics.svcca(a, b, 6)])
def test_orthogonal_and_isotropic_scaling_invariance(fn):
    x, y = _xy(noise=1.0)
    q = ortho_group.rvs(x.shape[1], random_state=3).astype(np.float32)
    base = float(fn(x, y))
    np.testing.assert_allclose(float(fn(x @ q, y)), base, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(fn(7.5 * x, 0.01 * y)), base, rtol=1e-4, atol=1e-5)


def test_linear_cka_not_invariant_to_anisotropic_scaling():
    # Guards the invariance test: a transform CKA is not invariant to does change it.
    x, y = _xy(noise=1.0)
    scale = np.linspace(0.1, 10, x.shape[1]).astype(np.float32)
    assert abs(float(metrics.linear_cka(x * scale, y)) - float(metrics.linear_cka(x, y))) > 1e-2


def test_shuffled_baseline_is_lower():
    x, y = _xy(n=200, noise=0.3)
    assert metrics.shuffled_baseline(metrics.linear_cka, x, y) < 0.5 * float(metrics.linear_cka(x, y))


def test_bad_inputs():
    x, y = _xy()
    with pytest.raises(AlignInputError, match="row counts differ"):
        metrics.linear_cka(x, y[:-1])
    x[5, 0] = np.nan
    with pytest.raises(AlignInputError, match="row 5"):
        metrics.linear_cka(x, y)
    with pytest.raises(ValueError, match="k=500"):
        metrics.svcca(y, y, 500)
    with pytest.raises(ValueError, match="k=0"):
        metrics.mutual_knn(y, y, 0)
