"""Hidden-state cache shared by the studies, so a second run does not re-run the models.

Entries are embedding stores written by the extraction pipeline (``linalign.extract``)
under ``<linalign cache root>/hidden_states/<key>/``, where the key hashes

  * the model fingerprint (``LoadedModel.fingerprint``: config + weights identity),
  * the corpus fingerprint (sha256 of the texts in order, ``text_fingerprint``),
  * pooling (or "per_token"), max_length, and the layer.

The cache root is the one ``linalign.assets`` uses ($LINALIGN_CACHE, else
$XDG_CACHE_HOME/linalign, else ~/.cache/linalign). A hit is a complete store whose
manifest carries the same model fingerprint and text fingerprint; anything else is
(re)extracted, and the store's own resume logic continues an interrupted extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Optional, Sequence

import numpy as np
from absl import logging

_MEMO: dict = {}


def cache_root(cache_dir: Optional[os.PathLike] = None) -> pathlib.Path:
    """``<linalign cache root>/hidden_states`` (not created)."""
    from linalign.assets.store import cache_root as assets_root

    return assets_root(cache_dir) / "hidden_states"


def cache_key(model_fingerprint: str, corpus_fingerprint: str, pooling: Optional[str],
              max_length: Optional[int], per_token: bool = False, layer: Optional[int] = None) -> str:
    """Deterministic key of one cache entry (hex, 24 chars).

    Args:
      model_fingerprint: ``LoadedModel.fingerprint``; must be non-empty.
      corpus_fingerprint: ``linalign.extract.store.text_fingerprint(texts)``.
      pooling: pooling name for pooled stores (ignored when per_token).
      max_length: truncation length.
      per_token: per-token store instead of pooled.
      layer: hidden layer index, None for the final (post-norm) state.
    """
    if not model_fingerprint:
        raise ValueError("model has no fingerprint; cannot key the hidden-state cache")
    ident = {"model": model_fingerprint, "corpus": corpus_fingerprint,
             "pooling": None if per_token else pooling, "per_token": bool(per_token),
             "max_length": max_length, "layer": layer}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def hidden_states(model, texts: Sequence[str], *, pooling: Optional[str] = None,
                  max_length: int = 128, per_token: bool = False, batch_size: int = 16,
                  cache_dir: Optional[os.PathLike] = None, layer: Optional[int] = None):
    """Pooled or per-token hidden states of ``texts``, from the cache or freshly extracted.

    Args:
      model: a ``LoadedModel``.
      texts: the texts, in row order.
      pooling: "mean" / "last" / "first"; default the model's ``default_pooling``.
      max_length: truncation length in tokens.
      per_token: return per-token states (``TokenRows``) instead of [n, dim] pooled rows.
      batch_size: extraction batch size.
      cache_dir: cache root override (tests).
      layer: hidden layer, None for the final state.

    Returns:
      [n, dim] float32 array, or a ``linalign.extract.store.TokenRows`` when per_token.
    """
    from linalign.extract import pipeline
    from linalign.extract.store import StoreError, open_store, text_fingerprint

    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    pooling = pooling or model.default_pooling
    tfp = text_fingerprint(texts)
    key = cache_key(model.fingerprint, tfp, pooling, max_length, per_token, layer)
    if key in _MEMO:
        return _MEMO[key]
    path = cache_root(cache_dir) / key
    store = None
    if (path / "manifest.json").exists():
        try:
            store = open_store(path)
            m = store.manifest
            if m.get("text_fingerprint") not in (None, tfp) or \
                    m.get("model_fingerprint") not in (None, model.fingerprint):
                raise StoreError(f"{path}: manifest does not match the requested model/texts")
            logging.info("hidden-state cache hit: %s (%d rows) at %s", model.name, store.num_rows, path)
        except StoreError as e:
            logging.info("cache entry not usable (%s); extracting", e)
            store = None
    if store is None:
        logging.info("extracting %d texts with %s (%s, max_length=%s) into %s", len(texts),
                     model.name, "per-token" if per_token else pooling, max_length, path)
        # Texts longer than max_length are cut on purpose (studies document it).
        kw = dict(pooling=pooling, per_token=per_token, max_length=max_length,
                  batch_size=batch_size, out_dir=path, truncation="silent")
        if layer is not None:
            kw["layer"] = layer
        pipeline.extract(model, texts, **kw)
        store = open_store(path)
    if store.num_rows != len(texts):
        raise ValueError(f"cache entry {path} has {store.num_rows} rows for {len(texts)} texts")
    out = store.read_all()
    if not per_token:
        out = np.asarray(out, np.float32)
    _MEMO[key] = out
    return out


def check_same_texts(store_a, store_b) -> None:
    """Refuses to pair two embedding stores that were not built from the same texts.

    Args:
      store_a, store_b: ``EmbeddingStore`` objects (or their manifests as dicts).

    Raises:
      ValueError naming both stores' row counts and text fingerprints.
    """
    ma = store_a if isinstance(store_a, dict) else store_a.manifest
    mb = store_b if isinstance(store_b, dict) else store_b.manifest
    fa, fb = ma.get("text_fingerprint"), mb.get("text_fingerprint")
    if fa is None or fb is None:
        raise ValueError("a store has no text_fingerprint; cannot check that rows correspond")
    if fa != fb or ma.get("num_rows") != mb.get("num_rows"):
        raise ValueError(
            f"the two stores hold different texts ({ma.get('model')}: {ma.get('num_rows')} rows, "
            f"text fingerprint {fa[:12]}; {mb.get('model')}: {mb.get('num_rows')} rows, text "
            f"fingerprint {fb[:12]}); rows of Z_A and Z_B must be the same texts in the same order")


def clear_memo() -> None:
    """Forgets in-process results (the on-disk cache stays)."""
    _MEMO.clear()
