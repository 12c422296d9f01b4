"""Cache keys and the refusal to pair stores built from different texts."""

import numpy as np
import pytest

from linalign.eval import cache
from linalign.extract.store import StoreWriter, text_fingerprint


def _store(path, texts, model, dim=4):
    w = StoreWriter(path, per_token=False, dtype="float32", dim=dim, model=model,
                    model_fingerprint=model + "-fp", text_fingerprint=text_fingerprint(texts),
                    total_rows=len(texts))
    w.append(np.ones((len(texts), dim), np.float32))
    return w.finalize()


def test_two_stores_with_different_texts_refused(tmp_path):
    a = _store(tmp_path / "a", ["one", "two"], "model-a")
    b = _store(tmp_path / "b", ["one", "three"], "model-b")
    c = _store(tmp_path / "c", ["one", "two"], "model-c", dim=3)
    cache.check_same_texts(a, c)  # same texts, different models and widths: fine
    with pytest.raises(ValueError, match="different texts.*model-a.*model-b"):
        cache.check_same_texts(a, b)


def test_cache_key_separates_every_field():
    base = dict(model_fingerprint="m", corpus_fingerprint="c", pooling="mean", max_length=64)
    k0 = cache.cache_key(**base)
    assert cache.cache_key(**base) == k0
    for change in (dict(model_fingerprint="m2"), dict(corpus_fingerprint="c2"), dict(pooling="last"),
                   dict(max_length=128), dict(per_token=True), dict(layer=3)):
        assert cache.cache_key(**{**base, **change}) != k0, change
    with pytest.raises(ValueError, match="no fingerprint"):
        cache.cache_key(**{**base, "model_fingerprint": ""})


def test_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LINALIGN_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path / "hidden_states"
