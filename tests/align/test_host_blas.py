"""The CPU accumulation path (batch products in numpy's BLAS, merge in JAX) against the jitted
step and a float64 reference: same statistics, masks included."""

import numpy as np
import pytest

from linalign.align import stats as S


def _data(n=12000, d_b=48, d_a=32, seed=0):
    rng = np.random.default_rng(seed)
    z_b = (rng.standard_normal((n, d_b)) * rng.uniform(0.5, 2, d_b) + 300).astype(np.float32)
    z_a = (z_b[:, :d_a] * 0.5 + rng.standard_normal((n, d_a)) - 200).astype(np.float32)
    return z_b, z_a, rng.random(n) > 0.3


def _stream(acc, z_b, z_a, mask, batch=2500):
    for i in range(0, len(z_b), batch):
        acc.add(z_b[i:i + batch], z_a[i:i + batch], None if mask is None else mask[i:i + batch])
    return acc.stats


@pytest.mark.parametrize("masked", [False, True])
def test_host_blas_matches_jitted_step_and_float64(masked):
    z_b, z_a, mask = _data()
    mask = mask if masked else None
    d_b, d_a = z_b.shape[1], z_a.shape[1]
    host = _stream(S.Accumulator(d_b, d_a, host_blas=True), z_b, z_a, mask)
    jit = _stream(S.Accumulator(d_b, d_a, host_blas=False), z_b, z_a, mask)
    keep = np.ones(len(z_b), bool) if mask is None else mask
    x, y = z_b[keep].astype(np.float64), z_a[keep].astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert int(host.n) == int(jit.n) == int(keep.sum())
    for got in (host, jit):
        np.testing.assert_allclose(np.asarray(got.c_bb), xc.T @ xc, rtol=0, atol=2e-6 * np.abs(xc.T @ xc).max())
        np.testing.assert_allclose(np.asarray(got.c_ba), xc.T @ yc, rtol=0, atol=2e-6 * np.abs(xc.T @ yc).max())
        np.testing.assert_allclose(np.asarray(got.ss_a), (yc * yc).sum(0), rtol=2e-6, atol=0)
        np.testing.assert_allclose(np.asarray(got.mean_b, np.float64) + np.asarray(got.mean_b_lo),
                                   x.mean(0), rtol=1e-7, atol=0)


def test_host_blas_is_the_cpu_default_and_refuses_float64():
    assert S.Accumulator(4, 3).host_blas
    assert not S.Accumulator(4, 3, host_blas=False).host_blas
    with pytest.raises(ValueError, match="host_blas needs one CPU device"):
        S.Accumulator(4, 3, dtype=np.float64, host_blas=True)


def test_host_blas_fully_masked_batch_changes_nothing():
    z_b, z_a, _ = _data(n=100)
    acc = S.Accumulator(z_b.shape[1], z_a.shape[1])
    acc.add(z_b, z_a)
    before = acc.stats
    acc.add(z_b, z_a, np.zeros(len(z_b), bool))
    after = acc.stats
    assert int(after.n) == 100
    np.testing.assert_array_equal(np.asarray(after.c_bb), np.asarray(before.c_bb))
