"""Finds a model in the local Hugging Face cache by its ``org/name``, without any network access.

The cache is the folder ``huggingface_hub`` downloads into: ``$HF_HUB_CACHE``, else the legacy
``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub``. A repository ``org/name`` lives in ``models--org--name/``:
``refs/<branch or tag>`` holds a commit hash and ``snapshots/<commit>/`` the files (links into
``blobs/``). ``org/name`` means revision ``main``; ``org/name@rev`` names a branch, a tag or a
commit hash.

A snapshot with ``config.json`` (or a sentence-transformers ``modules.json``) is a model
directory; one holding exactly one ``.gguf`` file and no config resolves to that file.
``huggingface_hub`` is not imported: this only reads the folder layout.
"""

from __future__ import annotations

import os
import pathlib
import re

from linalign.models.base import CheckpointError

_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w./-]+)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def cache_dir() -> pathlib.Path:
    """The local Hugging Face hub cache, found the way ``huggingface_hub`` finds it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return pathlib.Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return pathlib.Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(xdg).expanduser() / "huggingface" / "hub"


def is_repo_id(name: str) -> bool:
    """``org/name`` or ``name``, optionally with ``@revision``."""
    return bool(_REPO_ID.fullmatch(name)) and ".." not in name and not name.endswith(".gguf")


def _revision_commit(repo_dir: pathlib.Path, revision: str, repo_id: str) -> str:
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if not _COMMIT.fullmatch(commit):
            raise CheckpointError(f"{ref} holds {commit[:60]!r}, not a commit hash")
        return commit
    if _COMMIT.fullmatch(revision):
        return revision
    have = sorted(p.name for p in (repo_dir / "refs").glob("*")) if (repo_dir / "refs").is_dir() else []
    raise CheckpointError(f"{repo_id!r}: the local Hugging Face cache has no revision {revision!r} "
                          f"(looked for {ref}; refs there: {have or 'none'})")


def snapshot(repo_id: str, root: pathlib.Path | None = None) -> pathlib.Path:
    """The snapshot folder of ``org/name[@revision]`` in the local cache (``root``, default
    ``cache_dir()``).

    Raises:
      CheckpointError: the repository, revision or snapshot is absent; the message names the
        path that was looked for.
    """
    repo, _, revision = repo_id.partition("@")
    root = pathlib.Path(root) if root is not None else cache_dir()
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    if not repo_dir.is_dir():
        raise CheckpointError(f"{repo!r} is not in the local Hugging Face cache (looked for {repo_dir}; the "
                              "cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)")
    commit = _revision_commit(repo_dir, revision or "main", repo)
    snap = repo_dir / "snapshots" / commit
    if not snap.is_dir():
        raise CheckpointError(f"{repo!r}: revision {revision or 'main'} points at commit {commit}, but "
                              f"{snap} does not exist (an interrupted download?)")
    return snap


def resolve(repo_id: str, root: pathlib.Path | None = None) -> pathlib.Path:
    """The model directory (or single GGUF file) of ``org/name[@revision]`` in the local cache.

    Raises:
      CheckpointError: absent from the cache (naming where it looked), or a snapshot with no
        config and not exactly one GGUF file.
    """
    snap = snapshot(repo_id, root)
    if (snap / "config.json").exists() or (snap / "modules.json").exists():
        return snap
    ggufs = sorted(snap.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise CheckpointError(f"{repo_id!r}: {snap} holds {len(ggufs)} GGUF files "
                              f"({', '.join(p.name for p in ggufs[:6])}); pass the path of one")
    raise CheckpointError(f"{repo_id!r}: {snap} holds neither config.json nor a .gguf file")
