"""Hidden-state extraction: texts -> pooled or per-token states, in memory or as a store.

How a corpus is processed:
  * Rows are cut into chunks of ``shard_rows`` consecutive texts; one chunk becomes one store
    shard, so shards are in the original text order and resuming restarts at a chunk boundary.
  * Within a chunk, texts are sorted by token count and grouped into length buckets
    (``bucket_lengths``: 16, 32, 48, 64, 96, 128, 192, 256, ...). Each batch is padded to its
    bucket length and, if short, to the full batch size, so the jitted forward compiles once
    per bucket and never again.
  * Outputs are scattered back to their original positions before the shard is written.
  * With a mesh, each batch is sharded over its 'data' axis (data parallel) and params are
    replicated unless they already carry a sharding on that mesh.

The chunking depends only on row indices and ``shard_rows``, never on how far a previous run
got, so a resumed extraction computes every row in exactly the same batch as an uninterrupted
one and the stored arrays are bit-identical.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from linalign.checkpoints import config_hash
from linalign.extract import store as store_lib
from linalign.models import base

DEFAULT_SHARD_ROWS = 4096


def bucket_lengths(max_length: int) -> list[int]:
    """Padded lengths used for batches: multiples of 16 up to 64, then powers of two and their
    1.5x midpoints (at most ~1/3 padding per row), capped by and ending at ``max_length``."""
    out, x = [16, 32, 48, 64], 64
    while x < max_length:
        out += [x + x // 2, 2 * x]
        x *= 2
    out = sorted({b for b in out if b < max_length} | {max_length})
    return out


@dataclasses.dataclass
class _Fn:
    fn: Callable
    data_sharding: Any
    n_data: int


_FN_CACHE: dict = {}


def _forward_fn(model: base.LoadedModel, per_token: bool, layer: int, mesh) -> _Fn:
    """A jitted (params, ids, mask, pool_index) -> pooled [B, D] or states [B, T, D] (float32).

    The pooling mode is a traced index into ``base.POOLINGS`` chosen with ``lax.switch``, so
    one compilation per batch shape serves every pooling (compiles dominate small runs on CPU).
    """
    import jax
    import jax.numpy as jnp

    key = (id(model.module), model.fingerprint, per_token, layer, id(mesh))
    if key in _FN_CACHE:
        return _FN_CACHE[key]
    module = model.module
    want_all = layer != -1

    def fwd(params, ids, mask, pool_index):
        kw = {"output_hidden_states": want_all}
        if model.is_causal:
            kw["return_logits"] = False
        out = module.apply({"params": params}, ids, mask, **kw)
        h = out.hidden_states[layer] if want_all else out.last_hidden_state
        if per_token:
            return h.astype(jnp.float32)
        branches = [lambda h_, m_, p=p: base.pool(h_, m_, p) for p in base.POOLINGS]
        return jax.lax.switch(pool_index, branches, h, mask)

    if mesh is None:
        f = _Fn(jax.jit(fwd), None, 1)
    else:
        from jax.sharding import NamedSharding, PartitionSpec as P

        if "data" not in mesh.shape:
            raise ValueError(f"mesh needs a 'data' axis for batch sharding, has {dict(mesh.shape)}")
        f = _Fn(jax.jit(fwd), NamedSharding(mesh, P("data", None)), int(mesh.shape["data"]))
    _FN_CACHE[key] = f
    return f


def _params_on_mesh(params, mesh):
    """Replicates params over ``mesh`` unless they already live on it."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    leaf = jax.tree.leaves(params)[0]
    sh = getattr(leaf, "sharding", None)
    if isinstance(sh, NamedSharding) and sh.mesh == mesh:
        return params
    return jax.device_put(params, NamedSharding(mesh, P()))


def _plan_batches(lengths: np.ndarray, batch_size: int, buckets: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """[(bucket length, row indices)] over a chunk, shortest texts first.

    Full batches stay within their bucket; the few rows left over in a bucket are carried up
    into the next non-empty bucket instead of being padded out with filler rows, so only the
    longest bucket may end with a short batch.
    """
    order = np.argsort(lengths, kind="stable")
    bucket_of = np.searchsorted(np.asarray(buckets), lengths[order], side="left")
    plan = []
    carry = np.zeros(0, dtype=order.dtype)
    used = np.unique(bucket_of)
    for b in used:
        rows = np.concatenate([carry, order[bucket_of == b]])
        full = (len(rows) // batch_size) * batch_size
        for s in range(0, full, batch_size):
            plan.append((int(buckets[b]), rows[s:s + batch_size]))
        carry = rows[full:]
    if len(carry):
        plan.append((int(buckets[used[-1]]), carry))
    return plan


def extract(model: base.LoadedModel, texts: Sequence[str], pooling: Optional[str] = None,
            per_token: bool = False, max_length: Optional[int] = None, batch_size: int = 32,
            out_dir=None, mesh=None, resume: bool = True, truncation: str = "warn",
            layer: int = -1, store_dtype: str = "float32", shard_rows: int = DEFAULT_SHARD_ROWS,
            progress: bool = True, add_special_tokens: bool = True,
            on_shard: Optional[Callable[[int, int], None]] = None, extra_meta: Optional[dict] = None) -> Union[np.ndarray, store_lib.TokenRows,
                                                        store_lib.EmbeddingStore]:
    """Extracts hidden states for ``texts``.

    Args:
      model: a LoadedModel (``linalign.checkpoints.load``).
      texts: N strings.
      pooling: "mean" / "last" / "first"; None means the model's default pooling. Ignored when
        ``per_token``.
      per_token: keep every real token's state (with token ids and character offsets) instead
        of pooling.
      max_length: tokens per text including special tokens; default the tokenizer's limit.
      batch_size: rows per forward call (rounded up to a multiple of the mesh's data axis).
      out_dir: write an embedding store there (returns it); None returns arrays in memory.
      mesh: optional ``jax.sharding.Mesh`` with a 'data' axis.
      resume: continue a matching partial store in ``out_dir``; False overwrites it.
      truncation: "warn" / "error" / "silent" for texts longer than ``max_length``.
      layer: which hidden state: -1 the final one (after the final norm), else an index into
        ``hidden_states`` (0 = embeddings).
      store_dtype: dtype of the stored arrays ("float32" or "float16").
      shard_rows: texts per chunk / store shard.
      progress: show a tqdm bar.
      add_special_tokens: add [CLS]/[SEP] or BOS as the checkpoint's own pipeline does.
      on_shard: called as ``on_shard(shard_index, rows_done)`` after each shard is committed.
      extra_meta: more provenance for the manifest (e.g. the corpus name).

    Returns:
      pooled: [N, D] float32 array; per-token: TokenRows; with ``out_dir``: the EmbeddingStore.

    Raises:
      ValueError: empty text list, non-string text, text with no tokens (naming the row).
      TruncationError: a text exceeds ``max_length`` and truncation="error".
      StoreError: ``out_dir`` holds a different store and resume is on.
    """
    import jax

    texts = list(texts)
    if not texts:
        raise ValueError("no texts to extract")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"text {i} is {type(t).__name__}, not str")
    if batch_size <= 0 or shard_rows <= 0:
        raise ValueError(f"batch_size and shard_rows must be positive ({batch_size}, {shard_rows})")
    pool_mode = None if per_token else (pooling or model.default_pooling)
    if pool_mode is not None and pool_mode not in base.POOLINGS:
        raise ValueError(f"unknown pooling {pool_mode!r}; expected one of {base.POOLINGS}")
    tok = model.tokenizer
    if max_length is None:
        max_length = tok.model_max_length or 512
    dim = int(model.config.hidden_size)
    mesh = None if mesh is None else base.auto_axes(mesh)
    fn = _forward_fn(model, per_token, layer, mesh)
    pool_index = np.int32(base.POOLINGS.index(pool_mode) if pool_mode else 0)
    params = model.params if mesh is None else _params_on_mesh(model.params, mesh)
    padded_batch = -(-batch_size // fn.n_data) * fn.n_data
    buckets = bucket_lengths(int(max_length))

    writer = None
    if out_dir is not None:
        meta = dict(model=model.name, model_fingerprint=model.fingerprint,
                    config_hash=config_hash(model.config), family=model.family,
                    tokenizer=tok.name, pooling=pool_mode, max_length=int(max_length),
                    layer=int(layer), text_fingerprint=store_lib.text_fingerprint(texts),
                    total_rows=len(texts), truncation=truncation,
                    add_special_tokens=bool(add_special_tokens), shard_rows=int(shard_rows),
                    source=model.source, **(extra_meta or {}))
        existing = store_lib.EmbeddingStore(out_dir) if resume and _has_manifest(out_dir) else None
        if existing is not None and existing.manifest.get("shard_rows"):
            # Keep the chunking of the run being resumed so rows land in the same batches.
            meta["shard_rows"] = shard_rows = int(existing.manifest["shard_rows"])
        writer = store_lib.StoreWriter(out_dir, per_token=per_token, dtype=store_dtype, dim=dim,
                                       overwrite=not resume, **meta)
        if writer.complete:
            logging.info("%s is already complete (%d rows)", out_dir, writer.num_rows)
            return store_lib.open_store(out_dir)
        start = writer.num_rows
        if start % shard_rows:
            raise store_lib.StoreError(f"{out_dir}: {start} rows written is not a multiple of "
                                       f"shard_rows={shard_rows}; cannot resume consistently")
    else:
        start = 0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), initial=start, unit="text", desc=f"extract {model.name}")
    results: list = []
    n_tokens = 0
    t0 = time.perf_counter()
    for c0 in range(start, len(texts), shard_rows):
        chunk = texts[c0:c0 + shard_rows]
        enc = tok.encode_batch(chunk, max_length=max_length, truncation=truncation,
                               padding_side="right", add_special_tokens=add_special_tokens)
        if (enc.lengths == 0).any():
            bad = int(np.argmax(enc.lengths == 0))
            raise ValueError(f"text {c0 + bad} produces no tokens")
        n_tokens += int(enc.lengths.sum())
        pooled = np.zeros((len(chunk), dim), np.float32) if not per_token else None
        per_row: list = [None] * len(chunk) if per_token else None
        for blen, rows in _plan_batches(enc.lengths, padded_batch, buckets):
            # Fill a short batch with copies of its first row: real text, so no degenerate
            # all-padding rows, and the shape stays fixed for the bucket.
            fill = np.concatenate([rows, np.full(padded_batch - len(rows), rows[0])])
            ids = enc.ids[fill, :blen]
            mask = enc.mask[fill, :blen]
            if ids.shape[1] < blen:
                pad = blen - ids.shape[1]
                ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=tok.pad_id)
                mask = np.pad(mask, ((0, 0), (0, pad)))
            if fn.data_sharding is not None:
                ids, mask = (jax.device_put(a, fn.data_sharding) for a in (ids, mask))
            out = np.asarray(jax.device_get(fn.fn(params, ids, mask, pool_index)))[: len(rows)]
            if per_token:
                for j, r in enumerate(rows):
                    per_row[r] = out[j, : enc.lengths[r]]
            else:
                pooled[rows] = out
            if bar is not None:
                bar.update(len(rows))
        if per_token:
            lengths = enc.lengths.astype(np.int32)
            keep = enc.mask.astype(bool)
            data = store_lib.TokenRows(np.concatenate(per_row).astype(np.float32), lengths,
                                       enc.ids[keep].astype(np.int32),
                                       enc.offsets[keep].astype(np.int32))
        else:
            data = pooled
        if writer is not None:
            writer.append(data)
            if on_shard is not None:
                on_shard(len(writer.manifest["shards"]) - 1, writer.num_rows)
        else:
            _check_finite(data, c0)
            results.append(data)
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    logging.info("extracted %d texts (%d tokens) in %.1fs: %.0f tokens/s", len(texts) - start,
                 n_tokens, dt, n_tokens / max(dt, 1e-9))
    if writer is not None:
        return writer.finalize()
    if per_token:
        return store_lib.TokenRows.concat(results)
    return np.concatenate(results)


def _has_manifest(out_dir) -> bool:
    import pathlib

    return (pathlib.Path(out_dir) / store_lib.MANIFEST).exists()


def _check_finite(data, row0: int) -> None:
    states = data.states_nd if isinstance(data, store_lib.TokenRows) else data
    bad = ~np.isfinite(states).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        if isinstance(data, store_lib.TokenRows):
            i = int(np.searchsorted(np.cumsum(data.lengths_b), i, side="right"))
        raise ValueError(f"non-finite hidden state for text {row0 + i}")
