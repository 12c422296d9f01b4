"""Deterministic train/test splits and samples of a Corpus.

Randomness comes only from ``numpy.random.default_rng(seed)`` (PCG64, whose stream numpy keeps stable
across releases), and the chosen indices are returned in corpus order, so the same corpus and seed give
the same split on every machine.
"""

from __future__ import annotations

import numpy as np

from linalign.data.corpora import Corpus, DataError


def split_indices(labels: list[str] | None, n: int, test_fraction: float, seed: int,
                  stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, each sorted ascending, int64 of shapes [n_train] and [n_test].

    Stratified: every label gets round(test_fraction * count) test items, clipped so that a label with
    at least two items has at least one on each side (a label with a single item goes to train).
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise DataError(f"cannot split {n} texts into train and test")
    rng = np.random.default_rng(seed)
    if stratify and labels is not None:
        labels_arr = np.asarray(labels, dtype=object)
        test = []
        for lab in sorted(set(labels)):
            idx = np.flatnonzero(labels_arr == lab)
            k = int(round(test_fraction * idx.size))
            k = min(max(k, 1), idx.size - 1) if idx.size >= 2 else 0
            test.append(rng.permutation(idx)[:k])
        test_idx = np.sort(np.concatenate(test))
        if test_idx.size == 0:
            raise DataError(f"stratified split of {n} texts leaves the test side empty (every label has a "
                            "single text); pass stratify=False")
    else:
        k = min(max(int(round(test_fraction * n)), 1), n - 1)
        test_idx = np.sort(rng.permutation(n)[:k])
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def train_test_split(corpus: Corpus, test_fraction: float = 0.2, seed: int = 0,
                     stratify: bool = True) -> tuple[Corpus, Corpus]:
    """Splits a corpus into (train, test), stratified by label when it has labels.

    Args:
      corpus: the corpus to split (at least 2 texts).
      test_fraction: share of texts for test, in (0, 1).
      seed: random seed; the same seed gives the same split.
      stratify: keep each label's share equal on both sides (ignored for unlabelled corpora).

    Returns:
      (train, test) Corpora named "<name>/train" and "<name>/test", both with the parent's label_names
      and the split settings in metadata.
    """
    train_idx, test_idx = split_indices(corpus.labels, len(corpus), test_fraction, seed, stratify)
    out = []
    for part, idx in (("train", train_idx), ("test", test_idx)):
        sub = corpus.subset(idx, name=f"{corpus.name}/{part}")
        sub.metadata["split"] = {"part": part, "test_fraction": test_fraction, "seed": seed,
                                 "stratify": bool(stratify and corpus.labels is not None)}
        out.append(sub)
    return out[0], out[1]


def sample(corpus: Corpus, n: int, seed: int = 0) -> Corpus:
    """``n`` texts drawn without replacement (returned in corpus order), deterministic in ``seed``."""
    if not 0 < n <= len(corpus):
        raise DataError(f"sample: n must be in [1, {len(corpus)}] for corpus {corpus.name!r}, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(corpus), size=n, replace=False))
    sub = corpus.subset(idx, name=f"{corpus.name}/sample{n}")
    sub.metadata["sample"] = {"n": n, "seed": seed}
    return sub
