"""The optax logistic-regression head against sklearn, and its input checks."""

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


def test_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    x, y = _blobs()
    wd = 1e-2
    head = fit_head(x, [f"c{k}" for k in y], weight_decay=wd, val_fraction=0.0,
                    max_steps=3000, learning_rate=0.05)
    # Same objective as ours on standardised features: C = 1 / (n * wd).
    mu, sd = x.mean(0), x.std(0)
    ref = LogisticRegression(C=1.0 / (len(x) * wd), max_iter=5000, tol=1e-10).fit((x - mu) / sd, y)
    p_ref = ref.predict_proba((x - mu) / sd)
    logits = head.logits(x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=5e-3)
    assert head.label_names == ["c0", "c1", "c2"]


def test_early_stopping_and_accuracy():
    x, y = _blobs(n=400, seed=1)
    head = fit_head(x, y, val_fraction=0.2, patience=50, max_steps=5000)
    assert head.history["steps"] < 5000
    assert head.accuracy(x, np.asarray(encode_labels(y)[0])) > 0.9


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
    head = fit_head(x, ["a", "b"] * 3, max_steps=20)
    with pytest.raises(ValueError, match="width 3, the head expects 8"):
        head.logits(x[:, :3])
