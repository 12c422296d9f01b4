"""A small multinomial logistic-regression head f(z) = z V + c for HELIX tests and demos.

Trained with scikit-learn's ``LogisticRegression`` (lbfgs, multinomial loss) on centred
features divided by one global scale (their RMS); the scaling is folded back into (V, c) so
the provider serves one affine layer on raw embeddings, which is what the encrypted
``linear`` evaluates.

One scale for all features, not one per feature: sentence embeddings can have (near-)constant
coordinates (all-mpnet-base-v2 has one with std ~1e-35 over BBC articles); a per-feature
division folds 1/std into V and gives weights of 1e6 and more, which multiplies every CKKS and
fitting error by as much. With a global scale |V| stays at the size of the L2-regularised
logistic weights (about 1 for unit-norm embeddings).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def fit_logreg_head(z_nd: np.ndarray, y_n: Sequence[int], c_reg: float = 1.0, max_iter: int = 1000,
                    seed: int = 0) -> "tuple[np.ndarray, np.ndarray]":
    """Fits the head.

    Args:
      z_nd: [n, d] embeddings (finite).
      y_n: [n] integer labels in [0, K).
      c_reg: inverse L2 strength (scikit-learn's C).
      max_iter: lbfgs iterations.
      seed: solver seed.

    Returns:
      (V [d, K], c [K]) float64, such that argmax(z V + c) is the prediction. For K = 2 the
      binary model is expanded to two columns (scores -s/2, +s/2) so K = number of classes.
    """
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(z_nd, dtype=np.float64)
    y = np.asarray(y_n)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"need z [n, d] and y [n]; got {z.shape} and {y.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(z), axis=1))
    if bad.size:
        raise ValueError(f"embeddings have non-finite values in row {int(bad[0])}")
    classes = np.unique(y)
    if classes.size < 2 or not np.array_equal(classes, np.arange(classes.size)):
        raise ValueError(f"labels must be 0..K-1 with K >= 2, got {classes[:10]}")
    mu = z.mean(0)
    sd = float(np.sqrt(np.mean((z - mu) ** 2))) + 1e-12  # one global scale (see module doc)
    clf = LogisticRegression(C=c_reg, max_iter=max_iter, random_state=seed)
    clf.fit((z - mu) / sd, y)
    w_kd, b_k = clf.coef_, clf.intercept_
    if w_kd.shape[0] == 1:  # binary: expand to two symmetric columns
        w_kd, b_k = np.vstack([-w_kd / 2, w_kd / 2]), np.array([-b_k[0] / 2, b_k[0] / 2])
    v_dk = (w_kd / sd).T
    c_k = b_k - mu @ v_dk
    return v_dk, c_k
