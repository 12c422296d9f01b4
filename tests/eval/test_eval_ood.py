"""OOD scores and metrics against references and hand-computed values."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from linalign.eval import ood


def test_energy_matches_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(np.float32)
    ref = -np.log(np.exp(logits.astype(np.float64)).sum(1))
    np.testing.assert_allclose(ood.energy(logits), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ood.neg_energy_score(logits), -ref, rtol=1e-12, atol=1e-12)


def test_msp_matches_definition():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    np.testing.assert_allclose(ood.msp_score(logits), [0.5, 0.75], rtol=1e-12, atol=1e-12)


def test_auroc_matches_sklearn():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    ref = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[a, b])
    assert ood.auroc(a, b) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # Perfect separation and its reverse.
    assert ood.auroc([2, 3], [0, 1]) == pytest.approx(1.0, rel=0, abs=1e-12)
    assert ood.auroc([0, 1], [2, 3]) == pytest.approx(0.0, rel=0, abs=1e-12)


def test_fpr95_hand_computed():
    # 20 ID scores 1..20: m = ceil(0.95*20) = 19, threshold = 19th largest = 2.
    id_s = np.arange(1, 21, dtype=float)
    # OOD scores: 0, 1.5, 2 (tie -> accepted), 2.5, 30 -> accepted: 2, 2.5, 30 = 3 of 5.
    ood_s = np.array([0, 1.5, 2.0, 2.5, 30])
    assert ood.fpr_at_tpr(id_s, ood_s) == pytest.approx(0.6, rel=0, abs=1e-12)
    # 10 ID scores: m = ceil(9.5) = 10 -> threshold = smallest ID score (1).
    assert ood.fpr_at_tpr(np.arange(1, 11), [0.5, 1.0, 3.0]) == pytest.approx(2 / 3, rel=0, abs=1e-12)
    # Fully separated -> 0.
    assert ood.fpr_at_tpr(np.arange(10, 30), np.arange(0, 5)) == pytest.approx(0.0, rel=0, abs=0)


def test_fpr95_matches_roc_curve_interpolation_free():
    from sklearn.metrics import roc_curve
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.5, 1, 400), rng.normal(0, 1, 500)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(400), np.zeros(500)], np.r_[a, b])
    # With continuous scores, our threshold is the first ROC point with TPR >= 0.95.
    ref = fpr[np.argmax(tpr >= 0.95)]
    assert ood.fpr_at_tpr(a, b) == pytest.approx(ref, rel=0, abs=1e-12)


def test_mahalanobis_hand_case():
    # Two classes, identity within-class covariance by construction.
    z = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1],   # class 0 around origin
                  [11, 0], [9, 0], [10, 1], [10, -1]])  # class 1 around (10, 0)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    m = ood.Mahalanobis.fit(z, y, ridge=0.0)
    np.testing.assert_allclose(m.means_kd, [[0, 0], [10, 0]], rtol=0, atol=1e-12)
    # Pooled covariance = diag(0.5, 0.5) -> precision 2I.
    np.testing.assert_allclose(m.precision_dd, 2 * np.eye(2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.score(np.array([[0.0, 3.0]])), [-18.0], rtol=1e-12, atol=1e-12)


def test_bad_scores_named():
    with pytest.raises(ValueError, match="in-distribution score 1 is not finite"):
        ood.auroc([0.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="need in-distribution and OOD"):
        ood.fpr_at_tpr([], [1.0])
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        ood.energy(np.array([[0, 1], [1, 2], [np.nan, 0]]))
