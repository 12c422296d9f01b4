"""Out-of-distribution scores from a linear head, and the two detection metrics.

Every score here is oriented the same way: LARGER means MORE in-distribution. So the
energy score is returned negated (the paper's E(z) = -logsumexp(f(z)) is small for
in-distribution inputs), and the Mahalanobis score is the negated minimum distance.

Metrics treat in-distribution as the positive class:
  * AUROC: ``sklearn.metrics.roc_auc_score`` with label 1 for in-distribution rows.
  * FPR at 95% TPR: see ``fpr_at_tpr``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import logsumexp, softmax

from linalign.eval.head import check_features


def energy(logits_nk: np.ndarray) -> np.ndarray:
    """The paper's energy E(z) = -logsumexp_k f_k(z) (LOW for in-distribution).

    Args:
      logits_nk: [n, classes].

    Returns:
      [n] float64 energies.
    """
    logits_nk = check_features(logits_nk, "logits").astype(np.float64)
    return -logsumexp(logits_nk, axis=1)


def neg_energy_score(logits_nk: np.ndarray) -> np.ndarray:
    """[n] -E(z) = logsumexp f(z): larger = more in-distribution."""
    return -energy(logits_nk)


def msp_score(logits_nk: np.ndarray) -> np.ndarray:
    """[n] maximum softmax probability (Hendrycks & Gimpel 2017): larger = more in-distribution."""
    logits_nk = check_features(logits_nk, "logits").astype(np.float64)
    return softmax(logits_nk, axis=1).max(axis=1)


@dataclasses.dataclass
class Mahalanobis:
    """Class-conditional Gaussians with a tied covariance (Lee et al. 2018).

    Attributes:
      means_kd: [classes, hidden] class means of the training embeddings.
      precision_dd: [hidden, hidden] inverse of the tied (pooled within-class) covariance.
    """

    means_kd: np.ndarray
    precision_dd: np.ndarray

    @classmethod
    def fit(cls, z_nd: np.ndarray, y_n: np.ndarray, ridge: float = 1e-6) -> "Mahalanobis":
        """Fits class means and the tied covariance.

        Sigma = (1/n) sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T + ridge * mean(diag) * I; the
        small relative ridge keeps the inverse defined when n < hidden or features are
        collinear (it is reported, not hidden: the argument is explicit).

        Args:
          z_nd: [n, hidden] training embeddings.
          y_n: [n] integer labels.
          ridge: relative diagonal loading.
        """
        z_nd = check_features(z_nd, "training embeddings").astype(np.float64)
        y_n = np.asarray(y_n)
        if y_n.shape != (len(z_nd),):
            raise ValueError(f"labels have shape {y_n.shape}, expected ({len(z_nd)},)")
        classes = np.unique(y_n)
        means = np.stack([z_nd[y_n == k].mean(0) for k in classes])
        centred = z_nd - means[np.searchsorted(classes, y_n)]
        cov = centred.T @ centred / len(z_nd)
        cov += ridge * max(np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov))
        return cls(means_kd=means, precision_dd=np.linalg.inv(cov))

    def distances(self, z_nd: np.ndarray) -> np.ndarray:
        """[n, classes] squared Mahalanobis distances to each class mean."""
        z_nd = check_features(z_nd, "embeddings", self.means_kd.shape[1]).astype(np.float64)
        diff = z_nd[:, None, :] - self.means_kd[None]
        return np.einsum("nkd,de,nke->nk", diff, self.precision_dd, diff)

    def score(self, z_nd: np.ndarray) -> np.ndarray:
        """[n] -min_k distance: larger = more in-distribution."""
        return -self.distances(z_nd).min(axis=1)


def _check_scores(id_scores, ood_scores):
    a = np.asarray(id_scores, np.float64).ravel()
    b = np.asarray(ood_scores, np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"need in-distribution and OOD scores, got {len(a)} and {len(b)}")
    for name, s in (("in-distribution", a), ("OOD", b)):
        bad = ~np.isfinite(s)
        if bad.any():
            raise ValueError(f"{name} score {int(np.argmax(bad))} is not finite")
    return a, b


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve with in-distribution as positive (sklearn's roc_auc_score)."""
    from sklearn.metrics import roc_auc_score

    a, b = _check_scores(id_scores, ood_scores)
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    return float(roc_auc_score(y, np.concatenate([a, b])))


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """False-positive rate at a given true-positive rate, in-distribution positive.

    Definition used here: an input is accepted as in-distribution when its score is >= t.
    The threshold t is the LARGEST value that accepts at least a fraction ``tpr`` of the
    in-distribution scores, i.e. the m-th largest in-distribution score with
    m = ceil(tpr * n_id). The result is the fraction of OOD scores >= t (ties with t count
    as accepted, the pessimistic choice). Example: 20 in-distribution scores, tpr=0.95 ->
    m = 19, t = the 19th largest (the second smallest) in-distribution score.

    Args:
      id_scores: [n_id] in-distribution scores (larger = more in-distribution).
      ood_scores: [n_ood] OOD scores.
      tpr: target true-positive rate in (0, 1].

    Returns:
      FPR in [0, 1].
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    a, b = _check_scores(id_scores, ood_scores)
    # Guard against float error in tpr*n (0.95*20 = 19.000000000000004).
    m = max(1, math.ceil(round(tpr * len(a), 9)))
    t = np.sort(a)[::-1][m - 1]
    return float(np.mean(b >= t))


SCORES = ("energy", "msp", "mahalanobis")


def ood_report(head, id_z_nd, ood_z_nd, maha: Mahalanobis | None = None) -> dict:
    """AUROC and FPR@95TPR for every score.

    Args:
      head: a ``LinearHead``.
      id_z_nd: [n_id, hidden] in-distribution test embeddings (in the head's space).
      ood_z_nd: [n_ood, hidden] OOD embeddings.
      maha: fitted Mahalanobis model; its score is skipped when None.

    Returns:
      {score_name: {"auroc": float, "fpr95": float}}.
    """
    out = {}
    li, lo = head.logits(id_z_nd), head.logits(ood_z_nd)
    pairs = {"energy": (neg_energy_score(li), neg_energy_score(lo)),
             "msp": (msp_score(li), msp_score(lo))}
    if maha is not None:
        pairs["mahalanobis"] = (maha.score(id_z_nd), maha.score(ood_z_nd))
    for name, (a, b) in pairs.items():
        out[name] = {"auroc": auroc(a, b), "fpr95": fpr_at_tpr(a, b, 0.95)}
    return out
