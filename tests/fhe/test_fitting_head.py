"""The test head folds its scaling back exactly and predicts like scikit-learn."""

import numpy as np
import pytest

from linalign.fhe.head import fit_logreg_head


def test_head_matches_sklearn_predictions():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 10)) * 2
    y = rng.integers(0, 4, 400)
    z = centers[y] + rng.standard_normal((400, 10)) + 5.0
    v, c = fit_logreg_head(z, y)
    mu = z.mean(0)
    sd = np.sqrt(np.mean((z - mu) ** 2))
    clf = LogisticRegression(max_iter=1000, random_state=0).fit((z - mu) / sd, y)
    np.testing.assert_allclose(z @ v + c, clf.decision_function((z - mu) / sd), rtol=1e-8, atol=1e-8)
    assert np.mean(np.argmax(z @ v + c, 1) == y) > 0.9


def test_head_weights_stay_small_with_a_constant_coordinate():
    """A (near-)constant embedding coordinate must not blow V up (real MPNet has one)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    z = rng.standard_normal((300, 16)) * 0.1 + np.eye(3, 16)[y] * 0.2
    z[:, 5] = 0.25 + 1e-30 * rng.standard_normal(300)
    v, c = fit_logreg_head(z, y)
    assert np.abs(v).max() < 1e3 and np.all(np.isfinite(c))
    assert np.mean(np.argmax(z @ v + c, 1) == y) > 0.9


def test_head_bad_inputs():
    with pytest.raises(ValueError, match="row 3"):
        z = np.zeros((5, 2))
        z[3, 1] = np.nan
        fit_logreg_head(z, [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="0..K-1"):
        fit_logreg_head(np.zeros((4, 2)), [0, 2, 0, 2])
