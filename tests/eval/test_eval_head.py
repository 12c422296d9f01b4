"""The logistic-regression head: its objective, the fold-back to raw features, input checks."""

import numpy as np
import pytest

from linalign.eval.head import fit_head, encode_labels


def _blobs(n=300, d=8, k=3, seed=0, sep=2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(size=(n, d))
    # Unequal feature scales and an offset exercise the standardisation fold-back.
    x = x * np.linspace(0.1, 10, d) + 5.0
    return x.astype(np.float32), y


def _mean_ce(logits, y):
    z = logits - logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def test_head_is_the_regularised_optimum_on_raw_features():
    """The fold-back is exact, and no small step in V or c lowers the penalised loss."""
    x, y = _blobs()
    wd = 1e-2
    head = fit_head(x, [f"c{k}" for k in y], weight_decay=wd)
    assert head.label_names == ["c0", "c1", "c2"] and head.history["converged"]
    mu, sd = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    # Standardised weights: V_std = sd * V; objective = mean CE + wd/2 ||V_std||^2.
    v_std = head.v_dk.astype(np.float64) * sd[:, None]
    c_std = head.c_k.astype(np.float64) + mu @ head.v_dk.astype(np.float64)
    xs = (x - mu) / sd

    def objective(v, c):
        return _mean_ce(xs @ v + c, y) + 0.5 * wd * np.sum(v ** 2)

    np.testing.assert_allclose(xs @ v_std + c_std, head.logits(x), rtol=0, atol=2e-4)
    base = objective(v_std, c_std)
    rng = np.random.default_rng(1)
    for _ in range(20):
        dv, dc = rng.normal(size=v_std.shape) * 1e-2, rng.normal(size=c_std.shape) * 1e-2
        assert objective(v_std + dv, c_std + dc) >= base - 1e-6


def test_accuracy_binary_and_absent_class():
    x, y = _blobs(n=400, seed=1)
    head = fit_head(x, y)
    assert head.accuracy(x, np.asarray(encode_labels(y)[0])) > 0.9
    # Two classes: the two columns reproduce the binary model; a declared class with no
    # training rows is never predicted.
    xb, yb = x[y < 2], y[y < 2]
    head2 = fit_head(xb, [f"c{k}" for k in yb], ["c0", "c1", "c2"])
    assert head2.v_dk.shape == (8, 3)
    pred = head2.predict(xb)
    assert not (pred == 2).any() and np.mean(pred == yb) > 0.9


def test_one_class_refused():
    x, _ = _blobs(n=20)
    with pytest.raises(ValueError, match="single class"):
        fit_head(x, ["a"] * 20)


def test_missing_label_named():
    x, _ = _blobs(n=5)
    with pytest.raises(ValueError, match="row 3 has no label"):
        fit_head(x, ["a", "b", "a", None, "b"])
    with pytest.raises(ValueError, match="row 1 has no label"):
        fit_head(x, ["a", "", "a", "b", "b"])


def test_nan_row_and_length_mismatch():
    x, _ = _blobs(n=6)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4 contains NaN"):
        fit_head(x, ["a", "b"] * 3)
    x, _ = _blobs(n=6)
    with pytest.raises(ValueError, match="6 embedding rows but 5 labels"):
        fit_head(x, ["a", "b", "a", "b", "a"])
    head = fit_head(x, ["a", "b"] * 3, max_iter=20)
    with pytest.raises(ValueError, match="width 3, the head expects 8"):
        head.logits(x[:, :3])
