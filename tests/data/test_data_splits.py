"""Deterministic, stratified splits and samples."""

import numpy as np
import pytest

from linalign import data
from linalign.data import Corpus, DataError


def _toy(n_per=(50, 30, 7, 1)):
    labels = [f"c{i}" for i, n in enumerate(n_per) for _ in range(n)]
    return Corpus("toy", [f"text {i}" for i in range(len(labels))], labels)


def test_split_is_a_partition_and_stratified():
    c = _toy()
    train, test = data.train_test_split(c, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(c)
    assert set(train.texts).isdisjoint(test.texts) and set(train.texts) | set(test.texts) == set(c.texts)
    assert test.label_counts() == {"c0": 10, "c1": 6, "c2": 1, "c3": 0}  # round(0.2 n), singleton in train
    assert train.label_names == test.label_names == c.label_names
    # Corpus order is kept inside each part.
    order = {t: i for i, t in enumerate(c.texts)}
    assert [order[t] for t in test.texts] == sorted(order[t] for t in test.texts)
    assert test.name == "toy/test" and test.metadata["split"]["seed"] == 0


def test_split_is_deterministic_in_seed():
    c = _toy()
    a = data.train_test_split(c, seed=3)[1]
    b = data.train_test_split(c, seed=3)[1]
    other = data.train_test_split(c, seed=4)[1]
    assert a.texts == b.texts and a.fingerprint() == b.fingerprint()
    assert a.texts != other.texts


def test_bbc_split_proportions():
    bbc = data.load_corpus("bbc_news")
    train, test = data.train_test_split(bbc, test_fraction=0.2, seed=0)
    assert len(test) == 444 and len(train) == 1781
    for lab, n in bbc.label_counts().items():
        np.testing.assert_allclose(test.label_counts()[lab] / n, 0.2, atol=0.5 / n + 1e-12, rtol=0)


def test_unlabelled_and_unstratified():
    c = Corpus("u", [str(i) for i in range(10)])
    train, test = data.train_test_split(c, test_fraction=0.3, seed=1)
    assert len(test) == 3 and len(train) == 7 and test.labels is None
    assert test.metadata["split"]["stratify"] is False
    lab = _toy((5, 5))
    _, t = data.train_test_split(lab, test_fraction=0.5, seed=0, stratify=False)
    assert len(t) == 5


def test_split_argument_errors():
    c = _toy()
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DataError, match="test_fraction"):
            data.train_test_split(c, test_fraction=bad)
    with pytest.raises(DataError, match="test side empty"):
        data.train_test_split(Corpus("singletons", ["a", "b", "c"], ["x", "y", "z"]))
    assert len(data.train_test_split(Corpus("s", ["a", "b", "c"], ["x", "y", "z"]), stratify=False)[1]) == 1
    with pytest.raises(DataError, match="cannot split 1"):
        data.train_test_split(Corpus("one", ["a"]))


def test_sample():
    c = _toy()
    s = data.sample(c, 10, seed=5)
    assert len(s) == 10 and len(set(s.texts)) == 10
    assert s.texts == data.sample(c, 10, seed=5).texts
    assert s.texts != data.sample(c, 10, seed=6).texts
    order = {t: i for i, t in enumerate(c.texts)}
    assert [order[t] for t in s.texts] == sorted(order[t] for t in s.texts)
    with pytest.raises(DataError, match="n must be in"):
        data.sample(c, len(c) + 1)
    with pytest.raises(DataError, match="n must be in"):
        data.sample(c, 0)
