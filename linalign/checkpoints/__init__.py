"""Loads checkpoints into linalign's ports: ``load(path_or_asset_name) -> LoadedModel``.

    from linalign import checkpoints
    m = checkpoints.load("all-minilm-l6-v2")             # bundled asset
    m = checkpoints.load("/models/my-bert")              # Hugging Face directory
    m = checkpoints.load("SmolLM2-135M.Q4_1.gguf")       # GGUF file
    m = checkpoints.load("sentence-transformers/all-MiniLM-L6-v2")  # local Hugging Face cache
    out = m(enc.ids, enc.mask, output_hidden_states=True)

Dispatch: a path ending in ``.gguf`` goes to ``linalign.checkpoints.gguf.read_gguf``; a
directory to ``hf_dir`` (safetensors, sharded or not; sentence-transformers layouts give the
default pooling); anything else is looked up as an asset name, then as ``org/name[@revision]``
in the local Hugging Face cache (``hub_cache``: a snapshot directory or its single GGUF file;
never the network). The config's ``model_type`` selects the family
(``linalign.models.family_for``), whose ``Config.from_hf_config`` and ``convert_params`` do the
rest. Converted params are cached (``cache.py``) keyed by a cheap
fingerprint of the source, so the second load skips reading and converting the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Optional

import numpy as np

from linalign.models.base import CheckpointError, LoadedModel, UnsupportedConfigError, auto_axes

__all__ = ["CheckpointError", "LoadedModel", "load", "resolve", "config_hash"]

_DTYPES = ("float32", "bfloat16", "float16")


def resolve(path_or_asset_name: str | os.PathLike) -> pathlib.Path:
    """A filesystem path as is; else an asset name (``linalign.assets.path``); else a model in the
    local Hugging Face cache by ``org/name`` or ``org/name@revision`` (``hub_cache``; no network).

    Raises:
      CheckpointError: none of these; the message says where the cache was looked in.
    """
    from linalign.checkpoints import hub_cache

    p = pathlib.Path(path_or_asset_name).expanduser()
    if p.exists():
        return p
    name = str(path_or_asset_name)
    if isinstance(path_or_asset_name, os.PathLike) or not hub_cache.is_repo_id(name):
        raise CheckpointError(f"{p} does not exist")
    if "/" in name.partition("@")[0]:
        try:
            return hub_cache.resolve(name)
        except CheckpointError as e:
            raise CheckpointError(f"{name} is not an existing path, and {e}") from None
    from linalign import assets

    try:
        return assets.path(name)
    except assets.AssetError as e:
        asset_error = e
    try:  # a repository without an organisation, e.g. "gpt2"
        return hub_cache.resolve(name)
    except CheckpointError as e:
        raise CheckpointError(f"{name!r} is neither an existing path nor a usable asset: {asset_error}; "
                              f"and {e}") from None


def config_hash(config: Any) -> str:
    """sha256 of a config as sorted JSON: a family ``Config`` (frozen dataclass) or a Hugging Face
    config dict. Identifies the architecture, not the weights."""
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _read_source(src: pathlib.Path):
    """(hf_config, tensors, tokenizer, default_pooling or None, name, config file) from the source."""
    if src.is_file() and src.suffix == ".gguf":
        from linalign.checkpoints import gguf

        hf_config, tensors, tok = gguf.read_gguf(src)
        return hf_config, tensors, tok, None, src.stem, src
    if src.is_dir():
        from linalign.checkpoints import hf_dir

        hf_config, tensors, tok, d = hf_dir.read_hf_dir(src)
        return hf_config, tensors, tok, d.default_pooling, hf_dir.default_name(src), d.model_dir / "config.json"
    raise CheckpointError(f"{src}: expected a .gguf file or a Hugging Face model directory")


def _family_config(hf_config: dict, where):
    """(family module, family Config); errors name ``where`` (the config's file) and the field."""
    from linalign import models

    try:
        family = models.family_for(hf_config.get("model_type"))
        return family, family.Config.from_hf_config(hf_config)
    except (CheckpointError, UnsupportedConfigError) as e:
        raise type(e)(f"{where}: {e}") from None


def _fingerprint(src: pathlib.Path) -> str:
    from linalign.checkpoints import cache as cache_lib, hf_dir

    if src.is_file():
        return cache_lib.gguf_fingerprint(src)
    return hf_dir.fingerprint(hf_dir.inspect(src))


def _place(params: Any, dtype: str, mesh, shard_axis: Optional[str]):
    """Casts to ``dtype`` and puts params on devices.

    Without a mesh: the default device. With a mesh: replicated, or with ``shard_axis`` each
    matrix split along its largest dimension divisible by that axis's size (so a model too
    big for one device's memory is spread out; jit gathers what a layer needs).
    """
    import jax
    import jax.numpy as jnp

    jdt = jnp.dtype(dtype)

    def cast(x):
        x = np.asarray(x)
        return x.astype(jdt) if np.issubdtype(x.dtype, np.floating) or x.dtype == jnp.bfloat16 else x

    params = jax.tree.map(cast, params)
    if mesh is None:
        return jax.device_put(params)
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = auto_axes(mesh)
    n = mesh.shape[shard_axis] if shard_axis else 1
    if shard_axis and shard_axis not in mesh.shape:
        raise ValueError(f"shard_axis {shard_axis!r} is not a mesh axis ({dict(mesh.shape)})")

    def spec(x):
        if n > 1 and x.ndim >= 2:
            dims = sorted(range(x.ndim), key=lambda i: -x.shape[i])
            for i in dims:
                if x.shape[i] % n == 0:
                    s = [None] * x.ndim
                    s[i] = shard_axis
                    return P(*s)
        return P()

    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), params)


def load(path_or_asset_name, dtype: str = "float32", mesh=None, cache: bool = True,
         shard_axis: Optional[str] = None, cache_root: Optional[os.PathLike] = None) -> LoadedModel:
    """Loads a checkpoint into its linalign port.

    Args:
      path_or_asset_name: a ``.gguf`` file, a Hugging Face / sentence-transformers directory,
        an asset name from ``linalign.assets``, or ``org/name[@revision]`` of a model in the
        local Hugging Face cache.
      dtype: params and activation dtype: "float32" (default), "bfloat16" or "float16".
      mesh: optional ``jax.sharding.Mesh``; params are replicated over it unless
        ``shard_axis`` names an axis to split them over.
      cache: read/write the converted-model cache.
      shard_axis: mesh axis to split params over (for models too large to replicate).
      cache_root: cache root (default $LINALIGN_CACHE or ~/.cache/linalign).

    Returns:
      LoadedModel.

    Raises:
      CheckpointError: missing/corrupt files, tensors that do not match the config.
      UnsupportedConfigError: unknown model_type or config attribute.
    """
    from linalign import models
    from linalign.checkpoints import cache as cache_lib
    from linalign.models.tokenizer import Tokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    src = resolve(path_or_asset_name)
    t0 = time.perf_counter()
    fp = _fingerprint(src)
    key = cache_lib.entry_key(fp)
    hit = cache_lib.load(key, cache_root) if cache else None
    if hit is not None:
        params, meta = hit
        hf_config = meta["hf_config"]
        tok = Tokenizer.from_dict(meta["tokenizer"])
        pooling, name = meta["default_pooling"], meta["name"]
        family, config = _family_config(hf_config, src)
        how = "cache"
    else:
        hf_config, tensors, tok, pooling, name, cfg_file = _read_source(src)
        family, config = _family_config(hf_config, cfg_file)
        try:
            params = family.convert_params(tensors, config)
        except CheckpointError as e:
            raise CheckpointError(f"{src}: {e}") from None
        del tensors
        if pooling is None:
            pooling = "last" if family.IS_CAUSAL else "mean"
        if cache:
            cache_lib.save(key, params, {"hf_config": hf_config, "tokenizer": tok.to_dict(),
                                         "default_pooling": pooling, "name": name,
                                         "source": str(src), "fingerprint": fp}, cache_root)
        how = "source"
    import jax.numpy as jnp

    params = _place(params, dtype, mesh, shard_axis)
    module = family.Model(config, dtype=jnp.dtype(dtype))
    logging.info("loaded %s (%s) from %s in %.1fs", name, models.family_name(family), how,
                 time.perf_counter() - t0)
    if not isinstance(path_or_asset_name, os.PathLike) and not pathlib.Path(path_or_asset_name).exists():
        name = str(path_or_asset_name)  # an asset name is the most readable name
    return LoadedModel(name=name, family=models.family_name(family), config=config, module=module,
                       params=params, tokenizer=tok, is_causal=bool(family.IS_CAUSAL),
                       default_pooling=pooling, source=str(src),
                       fingerprint=hashlib.sha256(f"{fp}:{dtype}".encode()).hexdigest())
