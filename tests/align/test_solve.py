"""Ridge solve, lambda path and selection against float64 numpy references."""

import jax.numpy as jnp
import numpy as np
import pytest

try:  # jax >= 0.9: jax.enable_x64 is a config state; calling it with True gives the context.
    from jax import enable_x64 as _enable_x64

    def enable_x64():
        return _enable_x64(True)
except ImportError:  # jax 0.7 (the pinned FHE set)
    from jax.experimental import enable_x64

from linalign import align


def _problem(n=800, d_b=20, d_a=12, mean=0.0, std=1.0, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    z_b = rng.normal(mean, std, (n, d_b))
    w = rng.normal(size=(d_b, d_a)) / np.sqrt(d_b)
    z_a = z_b @ w + noise * rng.normal(size=(n, d_a)) + 2.0
    return z_b, z_a


def _ref_solve(z_b, z_a, lam):
    x, y = np.asarray(z_b, np.float64), np.asarray(z_a, np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
    return w, my - mx @ w


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
def test_float64_matches_numpy_reference(method):
    z_b, z_a = _problem()
    with enable_x64():
        s = align.from_arrays(z_b, z_a, dtype=jnp.float64, batch_size=300)
        w, b = align.solve(s, 3.0, method=method)
        assert w.dtype == jnp.float64
    w_ref, b_ref = _ref_solve(z_b, z_a, 3.0)
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(b), b_ref, rtol=1e-6, atol=1e-9)


def test_sklearn_ridge_agrees():
    from sklearn.linear_model import Ridge

    z_b, z_a = _problem()
    with enable_x64():
        w, b = align.solve(align.from_arrays(z_b, z_a, dtype=jnp.float64), 5.0)
    sk = Ridge(alpha=5.0, solver="cholesky", fit_intercept=True).fit(z_b, z_a)
    np.testing.assert_allclose(np.asarray(w), sk.coef_.T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(b), sk.intercept_, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
def test_float32_statistics_float64_solve_on_ill_scaled_problem(method):
    # Mean 50, std 1: far from zero relative to the spread. The statistics are float32, the
    # solve float64: what remains is the statistics' own rounding (a few float32 ulps after
    # centring) times the condition number of the (scaled) problem.
    z_b, z_a = _problem(n=5000, d_b=32, d_a=16, mean=50.0, std=1.0, seed=1)
    z_b32, z_a32 = z_b.astype(np.float32), z_a.astype(np.float32)
    lam = 1.0
    s = align.from_arrays(z_b32, z_a32, batch_size=1024)
    w, b = align.solve(s, lam, method=method)
    assert w.dtype == np.float64 and b.dtype == np.float64
    w_ref, b_ref = _ref_solve(z_b32, z_a32, lam)
    path = align.RidgePath(s)
    bound = path.condition(lam) * 64 * float(np.finfo(np.float32).eps)
    assert bound < 1e-4  # well-conditioned after centring
    err_w = np.linalg.norm(np.asarray(w, np.float64) - w_ref) / np.linalg.norm(w_ref)
    assert err_w <= bound, (err_w, bound)
    # The bias carries |mean_b| * ||W|| amplification of the same relative error.
    err_b = np.linalg.norm(np.asarray(b, np.float64) - b_ref) / np.linalg.norm(b_ref)
    amp = np.linalg.norm(z_b32.mean(0)) * np.linalg.norm(w_ref, 2) / np.linalg.norm(b_ref)
    assert err_b <= bound * max(amp, 1.0), (err_b, bound, amp)


def test_lam_zero_with_d_b_above_n_is_refused():
    z_b, z_a = _problem(n=10, d_b=20)
    s = align.from_arrays(z_b.astype(np.float32), z_a.astype(np.float32))
    with pytest.raises(align.SingularSystemError, match="d_b=20 > n-1=9"):
        align.solve(s, 0.0)
    w, _ = align.solve(s, 1.0)  # ridge makes it well posed
    assert np.all(np.isfinite(np.asarray(w)))


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
def test_lam_zero_with_collinear_columns_is_refused(method):
    z_b, z_a = _problem(n=400, d_b=10)
    z_b[:, 3] = 2 * z_b[:, 1] - z_b[:, 7]  # exact collinearity
    s = align.from_arrays(z_b.astype(np.float32), z_a.astype(np.float32))
    with pytest.raises(align.SingularSystemError, match="numerically singular"):
        align.solve(s, 0.0, method=method)


def test_negative_lambda_and_unknown_method():
    s = align.from_arrays(*(a.astype(np.float32) for a in _problem(n=50, d_b=4, d_a=3)))
    with pytest.raises(ValueError, match="non-negative"):
        align.solve(s, -1.0)
    with pytest.raises(ValueError, match="unknown method"):
        align.solve(s, 1.0, method="lu")


def test_path_matches_cholesky_over_grid():
    z_b, z_a = _problem(seed=4)
    s = align.from_arrays(z_b.astype(np.float32), z_a.astype(np.float32))
    path = align.RidgePath(s)
    for lam in (0.1, 10.0, 1000.0):
        w_path, b_path = path.solve(lam)
        w_ref, b_ref = _ref_solve(z_b.astype(np.float32), z_a.astype(np.float32), lam)
        np.testing.assert_allclose(np.asarray(w_path), w_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(b_path), b_ref, rtol=1e-4, atol=1e-4)


def _split(z_b, z_a, n_train):
    return (z_b[:n_train], z_a[:n_train]), (z_b[n_train:], z_a[n_train:])


def test_select_lambda_matches_brute_force():
    # Few rows, many features, heavy noise: the held-out optimum is interior.
    z_b, z_a = _problem(n=260, d_b=60, d_a=8, noise=3.0, seed=5)
    z_b, z_a = z_b.astype(np.float32), z_a.astype(np.float32)
    (tb, ta), (vb, va) = _split(z_b, z_a, 160)
    s = align.from_arrays(tb, ta)
    grid = np.logspace(-2, 4, 13)
    best, scores = align.select_lambda(s, vb, va, grid)
    brute = []
    for lam in grid:
        w, b = _ref_solve(tb, ta, lam)
        brute.append(np.mean((vb.astype(np.float64) @ w + b - va) ** 2))
    brute = np.asarray(brute)
    assert 0 < np.argmin(brute) < len(grid) - 1  # interior, so the test is meaningful
    assert best == grid[np.argmin(brute)]
    np.testing.assert_allclose(scores, brute, rtol=1e-3, atol=1e-6)


def test_gcv_matches_brute_force_formula():
    z_b, z_a = _problem(n=200, d_b=40, d_a=6, noise=2.0, seed=6)
    s = align.from_arrays(z_b.astype(np.float32), z_a.astype(np.float32))
    grid = np.logspace(-1, 4, 11)
    best, scores = align.select_lambda_gcv(s, grid)
    x = z_b.astype(np.float32).astype(np.float64)
    y = z_a.astype(np.float32).astype(np.float64)
    n = len(x)
    ref = []
    for lam in grid:
        w, b = _ref_solve(x, y, lam)
        xc = x - x.mean(0)
        hat_trace = 1 + np.trace(xc @ np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T))
        ref.append(n * np.sum((x @ w + b - y) ** 2) / (n - hat_trace) ** 2)
    np.testing.assert_allclose(scores, ref, rtol=1e-3, atol=0)
    assert best == grid[int(np.argmin(ref))]


def test_train_r2_from_stats_matches_direct():
    z_b, z_a = _problem(seed=7)
    z_b, z_a = z_b.astype(np.float32), z_a.astype(np.float32)
    s = align.from_arrays(z_b, z_a)
    w, b = align.solve(s, 1.0)
    pred = z_b.astype(np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    yc = z_a - z_a.mean(0)
    direct = 1 - np.sum((pred - z_a) ** 2) / np.sum(yc.astype(np.float64) ** 2)
    np.testing.assert_allclose(align.train_r2(s, w, b), direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(align.train_r2(s, w, np.asarray(b) + 1.0),
                               1 - (np.sum((pred + 1 - z_a) ** 2)) / np.sum(yc.astype(np.float64) ** 2),
                               rtol=1e-4, atol=1e-5)


def test_singular_error_suggests_a_lambda_that_works():
    import re

    z_b, z_a = _problem(n=400, d_b=10)
    z_b[:, 3] = 2 * z_b[:, 1] - z_b[:, 7]
    s = align.from_arrays(z_b.astype(np.float32), z_a.astype(np.float32))
    keep = [j for j in range(10) if j != 3]
    w_ok, b_ok = _ref_solve(z_b[:, keep].astype(np.float32), z_a.astype(np.float32), 0.0)
    pred_ok = z_b[:, keep] @ w_ok + b_ok
    for method in ("cholesky", "eigh"):
        with pytest.raises(align.SingularSystemError) as e:
            align.solve(s, 0.0, method=method)
        msg = str(e.value)
        assert "float64" in msg  # the other advice: accumulate in float64
        f = float(re.search(r"lam='rel:([0-9.e+-]+)'", msg).group(1))
        lam = align.LambdaSpec.parse(f"rel:{f}")
        lam_abs, info = align.choose_lambda(s, lam)
        assert info["lam_selection"] == "fixed-relative"
        w, b = align.solve(s, lam_abs, method=method)
        # The suggested ridge settles the null space without hurting the fit.
        pred = z_b @ w + b
        np.testing.assert_allclose(pred, pred_ok, rtol=1e-3, atol=1e-3)


def test_float64_moments_from_elsewhere_keep_float64():
    # Moments computed outside jax (e.g. decrypted by HELIX) in float64 are solved in float64.
    z_b, z_a = _problem(n=300, d_b=8, d_a=3, mean=100.0)
    xc, yc = z_b - z_b.mean(0), z_a - z_a.mean(0)
    s = align.from_moments(300, z_b.mean(0), z_a.mean(0), xc.T @ xc, xc.T @ yc)
    assert isinstance(s, align.HostStats) and s.c_bb.dtype == np.float64
    w, b = align.solve(s, 0.5)
    w_ref, b_ref = _ref_solve(z_b, z_a, 0.5)
    np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(align.AlignInputError, match="inconsistent moment shapes"):
        align.from_moments(10, np.zeros(3), np.zeros(2), np.zeros((3, 3)), np.zeros((2, 3)))
