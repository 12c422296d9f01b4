"""The lambda policy: hashed folds, per-fold statistics in one pass, exact k-fold CV from them
(against brute-force refits on the same folds), GCV's refusal, relative lambdas, scaling."""

import numpy as np
import pytest

from linalign import align
from linalign.align import fitting, lambdas


def _data(n=600, d_b=24, d_a=10, mean=3.0, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 6))
    z_b = u @ rng.normal(size=(6, d_b)) + rng.normal(size=(n, d_b)) + mean
    z_a = u @ rng.normal(size=(6, d_a)) + 0.5 * rng.normal(size=(n, d_a)) - mean
    return z_b.astype(np.float32), z_a.astype(np.float32)


def _brute_kfold(z_b, z_a, folds, grid):
    """Held-out SSE per lambda: refit ridge on the other folds' rows, predict fold j's rows."""
    x, y = z_b.astype(np.float64), z_a.astype(np.float64)
    sse = np.zeros(len(grid))
    for j in np.unique(folds):
        tr = folds != j
        mx, my = x[tr].mean(0), y[tr].mean(0)
        xc = x[tr] - mx
        for g, lam in enumerate(grid):
            w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y[tr] - my))
            sse[g] += np.sum(((x[~tr] - mx) @ w + my - y[~tr]) ** 2)
    return sse


def test_fold_of_is_balanced_deterministic_and_batch_independent():
    f = align.fold_of(np.arange(1003), 5)
    assert set(np.bincount(f)) == {200, 201}
    np.testing.assert_array_equal(f[500:700], align.fold_of(np.arange(500, 700), 5))
    # A row's fold depends on its index only: any subset, in any order, agrees.
    idx = np.random.default_rng(0).permutation(1003)[:77]
    np.testing.assert_array_equal(align.fold_of(idx, 5), f[idx])
    assert not np.array_equal(align.fold_of(np.arange(1003), 5, seed=1), f)
    # Even tiny inputs fill every fold.
    assert set(align.fold_of(np.arange(10), 5)) == set(range(5))
    with pytest.raises(ValueError, match="non-negative integer"):
        align.fold_of(np.array([-1, 2]), 5)
    with pytest.raises(ValueError, match="folds must be >= 1"):
        align.fold_of(np.arange(3), 0)


@pytest.mark.parametrize("text,kind,value,folds", [
    ("auto", "cv", None, None), (None, "cv", None, None), ("cv:10", "cv", None, 10),
    ("gcv", "gcv", None, None), ("1e-4", "fixed", 1e-4, None), (0.5, "fixed", 0.5, None),
    ("rel:1e-3", "rel", 1e-3, None)])
def test_lambda_spec_parse(text, kind, value, folds):
    s = align.LambdaSpec.parse(text)
    assert (s.kind, s.value, s.folds) == (kind, value, folds)


@pytest.mark.parametrize("bad,msg", [("ridge", "lam must be a number, 'gcv', 'cv' or 'auto'"),
                                     ("cv:1", "K >= 2"), ("cv:x", "integer K"),
                                     ("rel:-1", "F must be finite"), (-1.0, "finite number >= 0"),
                                     ("nan", "finite number >= 0")])
def test_lambda_spec_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        align.LambdaSpec.parse(bad)


@pytest.mark.parametrize("dtype,batch", [("float64", 97), ("float64", 600), ("float32", 128)])
def test_streamed_kfold_equals_brute_force(dtype, batch):
    z_b, z_a = _data()
    acc = align.FoldedAccumulator(24, 10, folds=5, dtype=dtype, chunk_rows=64)
    for i in range(0, len(z_b), batch):
        acc.add(z_b[i:i + batch], z_a[i:i + batch])
    grid = lambdas.default_grid(acc.stats)
    lam, info = align.choose_lambda(acc.fold_stats, "auto", grid=grid)
    want = _brute_kfold(z_b, z_a, align.fold_of(np.arange(len(z_b)), 5), grid)
    rtol = 1e-6 if dtype == "float64" else 1e-4  # float32 statistics carry ~7 digits
    np.testing.assert_allclose(info["scores"], want, rtol=rtol, atol=0)
    assert lam == grid[int(np.argmin(want))] and info["lam_selection"] == "kfold-5"
    assert info["fold_rows"] == [120] * 5
    # The total is the exact merge of the folds.
    whole = align.to_host64(align.from_arrays(z_b, z_a))
    np.testing.assert_allclose(acc.stats.c_bb, whole.c_bb, rtol=1e-5, atol=1e-3)
    assert int(acc.stats.n) == 600
    lam2, sse = align.select_lambda_kfold(acc.fold_stats, grid)
    assert lam2 == lam
    np.testing.assert_allclose(sse, info["scores"], rtol=1e-12, atol=0)


def test_two_processes_with_row_offsets_give_the_same_folds():
    z_b, z_a = _data(n=300)
    one = align.FoldedAccumulator(24, 10, folds=4, dtype="float64")
    one.add(z_b, z_a)
    parts = [align.FoldedAccumulator(24, 10, folds=4, dtype="float64", row_offset=lo)
             for lo in (0, 170)]
    parts[0].add(z_b[:170], z_a[:170])
    parts[1].add(z_b[170:], z_a[170:])
    for j in range(4):
        merged = align.merge_all([p.fold_stats[j] for p in parts])
        np.testing.assert_allclose(merged.c_ba, one.fold_stats[j].c_ba, rtol=1e-10, atol=1e-9)
        assert int(merged.n) == int(one.fold_stats[j].n)


def test_more_folds_than_rows_and_empty_folds_are_refused():
    z_b, z_a = _data(n=4)
    acc = align.FoldedAccumulator(24, 10, folds=5, dtype="float64").add(z_b, z_a)
    with pytest.raises(ValueError, match="5-fold cross-validation needs at least 5 rows, got 4"):
        align.choose_lambda(acc.fold_stats, "auto")
    with pytest.raises(ValueError, match="5-fold cross-validation needs at least 5 rows, got 4"):
        fitting.fit(z_b, z_a, heldout=0)
    # Ten rows none of which falls in fold 3.
    z_b, z_a = _data(n=100)
    idx = np.flatnonzero(align.fold_of(np.arange(100), 5) != 3)[:10]
    acc = align.FoldedAccumulator(24, 10, folds=5, dtype="float64")
    acc.add(z_b[idx], z_a[idx], row_index=idx)
    with pytest.raises(ValueError, match=r"fold\(s\) \[3\] received no rows out of 10"):
        align.choose_lambda(acc.fold_stats, "auto")
    with pytest.raises(ValueError, match="accumulated in 5 folds"):
        align.choose_lambda(align.FoldedAccumulator(24, 10, folds=5).add(*_data()).fold_stats,
                            "cv:3")
    with pytest.raises(ValueError, match="needs per-fold statistics"):
        align.choose_lambda(align.from_arrays(*_data()), "auto")


def test_gcv_never_used_when_rows_do_not_exceed_width():
    z_b, z_a = _data(n=20, d_b=24)
    acc = align.FoldedAccumulator(24, 10, folds=5, dtype="float64").add(z_b, z_a)
    lam, info = align.choose_lambda(acc.fold_stats, "gcv")
    assert info["lam_selection"] == "kfold-5" and "n <= d_b" in info["gcv_refused"]
    assert lam == align.choose_lambda(acc.fold_stats, "auto")[0]
    with pytest.raises(ValueError, match="GCV is not used when n <= d_b"):
        align.choose_lambda(acc.stats, "gcv")
    # n > d_b: GCV proper.
    big = align.from_arrays(*_data(n=400))
    assert align.choose_lambda(big, "gcv")[1]["lam_selection"] == "gcv"


def test_relative_lambda_is_a_fraction_of_the_mean_eigenvalue_and_recorded():
    z_b, z_a = _data()
    s = align.from_arrays(z_b, z_a)
    lam, info = align.choose_lambda(s, "rel:1e-2")
    h = align.to_host64(s)
    np.testing.assert_allclose(lam, 1e-2 * np.trace(h.c_bb) / 24, rtol=1e-12, atol=0)
    m = fitting.fit(z_b, z_a, "rel:1e-2", heldout=0)
    assert (m.metadata.lam_spec, m.metadata.lam_selection) == ("rel:1e-2", "fixed-relative")
    np.testing.assert_allclose(m.metadata.lam, lam, rtol=1e-6, atol=0)
    # The same relative lambda means the same thing at another scale of the embeddings.
    m10 = fitting.fit(10 * z_b, z_a, "rel:1e-2", heldout=0)
    np.testing.assert_allclose(np.asarray(m10(10 * z_b)), np.asarray(m(z_b)), rtol=1e-4, atol=1e-4)


def test_scaling_is_undone_exactly():
    z_b, z_a = _data()
    z_b[:, 3] *= 1000.0
    s = align.from_arrays(z_b, z_a, dtype=np.float32)
    sc = align.std_scale(s)
    x = z_b.astype(np.float64)
    xs = x * sc
    # Scaled fit = the plain ridge fit on z_b * scale, mapped back to unscaled inputs.
    ws, bs = align.solve(align.from_arrays(xs.astype(np.float32), z_a), 5.0)
    w, b = align.solve(s, 5.0, scale=sc)
    np.testing.assert_allclose(x @ w + b, xs @ ws + bs, rtol=1e-5, atol=1e-4)
    # At lam = 0 scaling does not change the predictions.
    w0, b0 = align.solve(s, 0.0)
    w1, b1 = align.solve(s, 0.0, scale=sc)
    np.testing.assert_allclose(x @ w1 + b1, x @ w0 + b0, rtol=1e-6, atol=1e-5)
    m = fitting.fit(z_b, z_a, 5.0, scale="std", heldout=0)
    assert m.metadata.scale == "std"
    np.testing.assert_allclose(np.asarray(m(z_b)), x @ w + b, rtol=1e-4, atol=1e-3)


def test_heldout_rows_are_hashed_and_excluded():
    mask = fitting.heldout_mask(np.arange(10000), 0.1, seed=0)
    assert 900 < mask.sum() < 1100
    np.testing.assert_array_equal(fitting.heldout_mask(np.arange(5000, 6000), 0.1), mask[5000:6000])
    z_b, z_a = _data(n=1000)
    m = fitting.fit(z_b, z_a, 1.0, heldout=0.2)
    is_val = fitting.heldout_mask(np.arange(1000), 0.2)
    assert m.metadata.n == (~is_val).sum()
    ev = m.evaluate(z_b[is_val], z_a[is_val])
    np.testing.assert_allclose(m.metadata.heldout["r2"], ev["r2"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.metadata.heldout["cosine"], ev["cosine"], rtol=1e-5, atol=1e-6)
