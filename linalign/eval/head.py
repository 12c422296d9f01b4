"""The provider's linear classification head: multinomial logistic regression on embeddings.

The paper's target model A carries a linear head f_A(z) = z V + c with K classes, trained on
A's pooled embeddings of labelled data. ``fit_head`` trains it with scikit-learn's
``LogisticRegression`` (lbfgs, multinomial cross-entropy plus an L2 penalty on V, solved to
convergence). Features are standardised during training for conditioning, and the
standardisation is folded back into (V, c) afterwards, so the returned head is an exact
affine function of the raw embedding: that is what HELIX evaluates under encryption.

scikit-learn replaced an optax loop (full-batch Adam with early stopping on a 10% split):
on the demo's BBC titles (699 train / 300 test) it was 3x faster (0.29 s vs 0.89 s for
MiniLM, 1.19 s vs 2.98 s for SmolLM2 on 2 CPU cores) at the same accuracy (0.870 vs 0.850,
0.713 vs 0.727), with one optimum instead of a stopping step.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass
class LinearHead:
    """A trained head f(z) = z V + c.

    Attributes:
      v_dk: [hidden, classes] float32 weights on the raw embedding.
      c_k: [classes] float32 bias.
      label_names: class names, index k names column k.
      history: training record (steps run, best step, best validation loss).
    """

    v_dk: np.ndarray
    c_k: np.ndarray
    label_names: list
    history: dict = dataclasses.field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.v_dk.shape[0])

    def logits(self, z_nd: np.ndarray) -> np.ndarray:
        """Class scores.

        Args:
          z_nd: [n, hidden] embeddings in the head's space.

        Returns:
          [n, classes] float32 logits z V + c.
        """
        z_nd = check_features(z_nd, "embeddings", self.hidden_size)
        return (z_nd.astype(np.float64) @ self.v_dk + self.c_k).astype(np.float32)

    def predict(self, z_nd: np.ndarray) -> np.ndarray:
        """[n] int class indices (argmax of the logits)."""
        return np.argmax(self.logits(z_nd), axis=1)

    def accuracy(self, z_nd: np.ndarray, y_n: np.ndarray) -> float:
        """Fraction of rows whose argmax equals the integer label y_n[i]."""
        y_n = np.asarray(y_n)
        if y_n.shape != (len(z_nd),):
            raise ValueError(f"labels have shape {y_n.shape}, expected ({len(z_nd)},)")
        return float(np.mean(self.predict(z_nd) == y_n))


def check_features(x_nd, what: str, hidden: Optional[int] = None) -> np.ndarray:
    """Validates a 2-D finite float matrix, naming the first bad row.

    Raises:
      ValueError for a wrong rank, wrong width, or a NaN/inf row.
    """
    x_nd = np.asarray(x_nd)
    if x_nd.ndim != 2:
        raise ValueError(f"{what} must be [n, hidden], got shape {x_nd.shape}")
    if hidden is not None and x_nd.shape[1] != hidden:
        raise ValueError(f"{what} have width {x_nd.shape[1]}, the head expects {hidden}")
    bad = ~np.isfinite(x_nd).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} row {int(np.argmax(bad))} contains NaN or inf "
                         f"({int(bad.sum())} bad rows in all)")
    return x_nd


def encode_labels(labels: Sequence, label_names: Optional[Sequence[str]] = None):
    """Maps string (or int) labels to indices, refusing missing ones.

    Args:
      labels: [n] labels; None, NaN or "" count as missing.
      label_names: fixed class order; default sorted unique labels.

    Returns:
      (y_n int array, label_names list).

    Raises:
      ValueError naming the first row with a missing or unknown label.
    """
    labels = list(labels)
    for i, lab in enumerate(labels):
        if lab is None or (isinstance(lab, float) and np.isnan(lab)) or (isinstance(lab, str) and not lab.strip()):
            n_missing = sum(1 for l in labels if l is None or l == "" or (isinstance(l, float) and np.isnan(l)))
            raise ValueError(f"training data row {i} has no label ({n_missing} rows without labels); "
                             "every training row needs a label")
    if label_names is None:
        label_names = sorted({str(l) for l in labels})
    label_names = [str(n) for n in label_names]
    index = {n: k for k, n in enumerate(label_names)}
    y = np.empty(len(labels), dtype=np.int32)
    for i, lab in enumerate(labels):
        k = index.get(str(lab))
        if k is None:
            raise ValueError(f"row {i} has label {lab!r}, not among the classes {label_names}")
        y[i] = k
    return y, label_names


def fit_head(x_nd, labels: Sequence, label_names: Optional[Sequence[str]] = None, *,
             weight_decay: float = 1e-3, max_iter: int = 2000, tol: float = 1e-6) -> LinearHead:
    """Trains a multinomial logistic-regression head with scikit-learn (lbfgs).

    Loss: mean softmax cross-entropy + (weight_decay / 2) * ||V_std||_F^2 on standardised
    features (the bias is not penalised): scikit-learn's objective with C = 1 / (n *
    weight_decay). Classes of ``label_names`` absent from the training rows get a zero weight
    column and a bias far below the others, so they are never predicted.

    Args:
      x_nd: [n, hidden] training embeddings.
      labels: [n] class labels (strings or ints); missing labels are refused.
      label_names: optional fixed class order.
      weight_decay: L2 strength on the (standardised) weights, per training row.
      max_iter, tol: lbfgs iteration limit and tolerance.

    Returns:
      LinearHead on the raw embedding space.

    Raises:
      ValueError for one class only, missing labels, NaN rows, mismatched lengths.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_nd = check_features(x_nd, "training embeddings")
    y_n, label_names = encode_labels(labels, label_names)
    if len(y_n) != len(x_nd):
        raise ValueError(f"{len(x_nd)} embedding rows but {len(y_n)} labels")
    present = np.unique(y_n)
    if len(present) < 2:
        raise ValueError(f"training data has a single class ({label_names[present[0]]!r}); "
                         "a classifier needs at least two classes")
    if not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0, got {weight_decay}")
    num_classes = len(label_names)

    x64 = x_nd.astype(np.float64)
    mu_d = x64.mean(0)
    sd_d = x64.std(0)
    # Constant features get unit scale so they contribute nothing rather than dividing by 0.
    sd_d = np.where(sd_d > 1e-8, sd_d, 1.0)
    xs_nd = (x64 - mu_d) / sd_d

    clf = LogisticRegression(C=1.0 / (len(y_n) * weight_decay), max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xs_nd, y_n)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef, icpt = clf.coef_, clf.intercept_
    if len(present) == 2:  # binary: one score s; two columns -s/2, +s/2 give the same softmax
        coef = np.concatenate([-coef / 2, coef / 2])
        icpt = np.concatenate([-icpt / 2, icpt / 2])
    v_std = np.zeros((x_nd.shape[1], num_classes))
    c_std = np.full(num_classes, float(np.min(icpt)) - 1e3)
    v_std[:, clf.classes_] = coef.T
    c_std[clf.classes_] = icpt
    # z_std = (z - mu) / sd  =>  z_std V + c = z (V / sd) + (c - (mu / sd) V).
    v_dk = v_std / sd_d[:, None]
    c_k = c_std - (mu_d / sd_d) @ v_std
    return LinearHead(v_dk=v_dk.astype(np.float32), c_k=c_k.astype(np.float32),
                      label_names=list(label_names),
                      history={"solver": "lbfgs", "iterations": int(np.max(clf.n_iter_)),
                               "converged": converged, "n_train": int(len(y_n)),
                               "weight_decay": weight_decay})
