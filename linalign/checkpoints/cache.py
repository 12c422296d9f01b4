"""Cache of converted checkpoints, so a model is dequantized/converted once per source file.

An entry is a directory ``<cache root>/converted/<key>/`` holding ``params.safetensors`` (the
converted params pytree, flattened to ``a/b/c`` names) and ``meta.json`` (the source's HF config,
the tokenizer state, default pooling, name and format version). The key hashes the source
fingerprint (file sizes, mtimes and header hashes; see ``hf_dir.fingerprint`` and
``gguf_fingerprint``) with the converter version, so editing or replacing the source file, or
changing a converter, misses the cache instead of serving stale weights.

Entries are assembled in a temporary directory and renamed into place, so a crash never leaves a
half-written entry that later loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Optional

import numpy as np

from linalign.atomic import atomic_dir

# Bump when any family's convert_params output changes layout or values.
CONVERTER_VERSION = 2  # 2: attention kernels stored 2-D [in, out]
_SEP = "/"


def cache_dir(root: Optional[os.PathLike] = None) -> pathlib.Path:
    """``<linalign cache>/converted`` ($LINALIGN_CACHE or ~/.cache/linalign by default)."""
    from linalign.assets.store import cache_root

    return pathlib.Path(cache_root(root)) / "converted"


def gguf_fingerprint(path: pathlib.Path) -> str:
    """sha256 over a GGUF file's name, size, mtime and first MiB (header and metadata start)."""
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()


def entry_key(source_fingerprint: str) -> str:
    return hashlib.sha256(f"v{CONVERTER_VERSION}:{source_fingerprint}".encode()).hexdigest()[:32]


def flatten(params: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict pytree -> {"a/b/c": array}."""
    out: dict[str, np.ndarray] = {}
    for k, v in params.items():
        if _SEP in str(k):
            raise ValueError(f"param key {k!r} contains {_SEP!r}")
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + _SEP))
        else:
            out[name] = np.ascontiguousarray(np.asarray(v))
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for name, v in flat.items():
        node = out
        *parents, leaf = name.split(_SEP)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def save(key: str, params: Any, meta: dict, root: Optional[os.PathLike] = None) -> pathlib.Path:
    """Writes a cache entry atomically; returns its directory.

    Args:
      key: ``entry_key(fingerprint)``.
      params: nested dict of arrays.
      meta: JSON-serialisable (hf_config, tokenizer state, pooling, name, ...).
    """
    from safetensors.numpy import save_file

    base = cache_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    final = base / key
    # Another process that finishes the same entry first wins; theirs is as good as ours.
    with atomic_dir(final, keep_existing=True) as tmp:
        save_file(flatten(params), str(tmp / "params.safetensors"))
        meta = dict(meta, converter_version=CONVERTER_VERSION)
        (tmp / "meta.json").write_text(json.dumps(meta))
    return final


def load(key: str, root: Optional[os.PathLike] = None) -> Optional[tuple[dict, dict]]:
    """(params numpy pytree, meta) for a cached entry, or None if absent or unreadable."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = cache_dir(root) / key
    if not (d / "meta.json").exists():
        return None
    try:
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("converter_version") != CONVERTER_VERSION:
            return None
        params = unflatten(load_file(str(d / "params.safetensors")))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        logging.warning("ignoring unreadable converted-model cache entry %s: %s", d, e)
        return None
    return params, meta


def clear(root: Optional[os.PathLike] = None) -> None:
    """Removes every converted-model cache entry."""
    shutil.rmtree(cache_dir(root), ignore_errors=True)
