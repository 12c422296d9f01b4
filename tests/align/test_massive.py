"""Fits on hidden states with real models' "massive activations" (a few dimensions ~1000x the
rest, means far from zero) work at the paper's lambda = 1e-4: float32 statistics, float64 solve."""

import numpy as np
import pytest

from linalign import align

MASSIVE = 1000.0


def _hidden_states(n, d, d_a, seed=0):
    """Correlated [n, d] source states with three massive dimensions, and [n, d_a] targets."""
    rng = np.random.default_rng(seed)
    big = [7, d // 2, d - 3]
    scale = np.ones(d, np.float32)
    scale[big] = MASSIVE
    mean = rng.normal(0, 5, d).astype(np.float32)
    mean[big] = 3 * MASSIVE
    u = rng.standard_normal((n, 64), dtype=np.float32)
    z_b = u @ (0.3 * rng.standard_normal((64, d), dtype=np.float32))
    z_b += rng.standard_normal((n, d), dtype=np.float32)
    z_b = z_b * scale + mean
    z_a = u @ rng.standard_normal((64, d_a), dtype=np.float32)
    z_a += 0.3 * rng.standard_normal((n, d_a), dtype=np.float32) + 2.0
    return z_b, z_a


def _reference_predictions(z_b, z_a, lam):
    x, y = z_b.astype(np.float64), z_a.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - my))
    return (x - mx) @ w + my, my


def _check(d, d_a, n=20000):
    z_b, z_a = _hidden_states(n, d, d_a)
    acc = align.Accumulator(d, d_a)
    for i in range(0, n, 4096):
        acc.add(z_b[i:i + 4096], z_a[i:i + 4096])
    stats = acc.stats
    assert stats.dtype == np.float32
    # The problem really is beyond float32: kappa(C_bb) * eps32 >> 1.
    assert align.RidgePath(stats).condition(1e-4) * np.finfo(np.float32).eps > 1
    w, b = align.solve(stats, 1e-4)
    amap = align.AffineMap(w, b)
    pred = np.asarray(amap(z_b), np.float64)
    ref, ref_mean = _reference_predictions(z_b, z_a, 1e-4)
    # Relative to the spread of the predictions (stricter than relative to their size).
    err = np.linalg.norm(pred - ref) / np.linalg.norm(ref - ref_mean)
    assert err < 1e-3, err
    return z_b, z_a, ref, ref_mean


def test_massive_activations_d896_match_float64_reference():
    z_b, z_a, ref, ref_mean = _check(896, 576)
    # The same through the public fit, with the paper's absolute lambda, no user action.
    from linalign.align.fitting import fit

    m = fit(z_b, z_a, 1e-4, heldout=0)
    assert (m.metadata.lam, m.metadata.lam_selection, m.metadata.dtype) == (1e-4, "fixed", "float64")
    err = np.linalg.norm(np.asarray(m(z_b), np.float64) - ref) / np.linalg.norm(ref - ref_mean)
    assert err < 1e-3, err


@pytest.mark.slow
def test_massive_activations_d4096_match_float64_reference():
    _check(4096, 256)
