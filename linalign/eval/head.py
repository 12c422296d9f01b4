"""The provider's linear classification head: multinomial logistic regression on embeddings.

The paper's target model A carries a linear head f_A(z) = z V + c with K classes, trained on
A's pooled embeddings of labelled data. ``fit_head`` trains it with optax (full-batch Adam on
the mean cross-entropy plus an L2 penalty on V), with early stopping on a stratified
validation split. Features are standardised during training for conditioning, and the
standardisation is folded back into (V, c) afterwards, so the returned head is an exact
affine function of the raw embedding: that is what HELIX evaluates under encryption.
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


def _stratified_split(y_n: np.ndarray, fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    val = []
    for k in np.unique(y_n):
        idx = np.flatnonzero(y_n == k)
        rng.shuffle(idx)
        n_val = int(round(fraction * len(idx)))
        # Keep at least one training row per class so no class vanishes from training.
        n_val = min(n_val, len(idx) - 1)
        val.extend(idx[:n_val].tolist())
    val = np.array(sorted(val), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(y_n)), val)
    return train, val


def fit_head(x_nd, labels: Sequence, label_names: Optional[Sequence[str]] = None, *,
             weight_decay: float = 1e-3, learning_rate: float = 0.05, max_steps: int = 2000,
             val_fraction: float = 0.1, patience: int = 100, eval_every: int = 10,
             seed: int = 0) -> LinearHead:
    """Trains a multinomial logistic-regression head with optax.

    Loss: mean softmax cross-entropy + (weight_decay / 2) * ||V_std||_F^2 on standardised
    features (the bias is not penalised), optimised full-batch with Adam. Every
    ``eval_every`` steps the validation loss (cross-entropy only) is checked; training stops
    after ``patience`` steps without improvement and the best parameters are kept. With
    ``val_fraction=0`` it runs ``max_steps`` steps.

    Args:
      x_nd: [n, hidden] training embeddings.
      labels: [n] class labels (strings or ints); missing labels are refused.
      label_names: optional fixed class order.
      weight_decay: L2 strength on the (standardised) weights.
      learning_rate: Adam step size.
      max_steps: step limit.
      val_fraction: stratified fraction held out for early stopping.
      patience: steps without validation improvement before stopping.
      eval_every: validation interval in steps.
      seed: split and initialisation seed.

    Returns:
      LinearHead on the raw embedding space.

    Raises:
      ValueError for one class only, missing labels, NaN rows, mismatched lengths.
    """
    import jax
    import jax.numpy as jnp
    import optax

    x_nd = check_features(x_nd, "training embeddings")
    y_n, label_names = encode_labels(labels, label_names)
    if len(y_n) != len(x_nd):
        raise ValueError(f"{len(x_nd)} embedding rows but {len(y_n)} labels")
    present = np.unique(y_n)
    if len(present) < 2:
        raise ValueError(f"training data has a single class ({label_names[present[0]]!r}); "
                         "a classifier needs at least two classes")
    num_classes = len(label_names)

    mu_d = x_nd.mean(0).astype(np.float64)
    sd_d = x_nd.std(0).astype(np.float64)
    # Constant features get unit scale so they contribute nothing rather than dividing by 0.
    sd_d = np.where(sd_d > 1e-8, sd_d, 1.0)
    xs_nd = ((x_nd - mu_d) / sd_d).astype(np.float32)

    if val_fraction > 0:
        tr, va = _stratified_split(y_n, val_fraction, seed)
    else:
        tr, va = np.arange(len(y_n)), np.array([], dtype=np.int64)
    if len(va) == 0:
        va = None

    x_tr, y_tr = jnp.asarray(xs_nd[tr]), jnp.asarray(y_n[tr])
    params = {"v": jnp.zeros((x_nd.shape[1], num_classes), jnp.float32),
              "c": jnp.zeros((num_classes,), jnp.float32)}
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)

    def ce(p, x, y):
        logits = x @ p["v"] + p["c"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss(p):
        return ce(p, x_tr, y_tr) + 0.5 * weight_decay * jnp.sum(p["v"] ** 2)

    @jax.jit
    def steps(p, s):
        # eval_every optimiser steps fused into one call to keep Python overhead small.
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None
        (p, s), _ = jax.lax.scan(body, (p, s), None, length=eval_every)
        return p, s

    val_loss = None
    if va is not None:
        x_va, y_va = jnp.asarray(xs_nd[va]), jnp.asarray(y_n[va])
        val_loss = jax.jit(lambda p: ce(p, x_va, y_va))

    best = (np.inf, params, 0)
    step = 0
    while step < max_steps:
        params, opt_state = steps(params, opt_state)
        step += eval_every
        if val_loss is None:
            best = (np.nan, params, step)
            continue
        vl = float(val_loss(params))
        if vl < best[0] - 1e-6:
            best = (vl, params, step)
        elif step - best[2] >= patience:
            break
    best_loss, params, best_step = best

    v_std = np.asarray(params["v"], np.float64)
    c_std = np.asarray(params["c"], np.float64)
    # z_std = (z - mu) / sd  =>  z_std V + c = z (V / sd) + (c - (mu / sd) V).
    v_dk = v_std / sd_d[:, None]
    c_k = c_std - (mu_d / sd_d) @ v_std
    return LinearHead(v_dk=v_dk.astype(np.float32), c_k=c_k.astype(np.float32),
                      label_names=list(label_names),
                      history={"steps": step, "best_step": best_step,
                               "best_val_loss": None if np.isnan(best_loss) else float(best_loss),
                               "n_train": int(len(tr)), "n_val": 0 if va is None else int(len(va)),
                               "weight_decay": weight_decay})
