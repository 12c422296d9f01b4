"""Atomic file and directory writes: the one place linalign writes a temporary name and renames.

Every writer in the package (maps, stores, reports, caches, HELIX bundles, benchmark results) goes
through these helpers, so an interrupted run leaves either the old file or nothing under the final
name, never a half-written one.

- ``atomic_write(path, data)``: bytes or text.
- ``atomic_write_json(path, obj)``: JSON text.
- ``atomic_file(path)``: a context manager that yields a temporary path beside ``path`` for writers
  that want a filename (``np.save``, ``safetensors.save_file``, ``fig.savefig``); renamed on success,
  removed on failure.
- ``atomic_dir(path, replace=...)``: the same for a whole directory; an existing directory is swapped
  out only after the new one is complete.
- ``jsonable(obj)``: numpy scalars/arrays and paths made strict JSON (non-finite floats -> null),
  for every metadata and results file.

Paths may be local paths or ``etils.epath`` paths on object stores (``gs://``, ``s3://``), where a
single-object rename is as close to atomic as the store offers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

_REMOTE = ("gs://", "s3://")


def _is_remote(path) -> bool:
    return str(path).startswith(_REMOTE)


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yields a temporary path in ``path``'s folder; renames it over ``path`` when the block ends.

    Args:
      path: the final file name. Its folder is created if missing.
      suffix: appended to the temporary name, for writers that insist on an extension
        (``np.savez`` adds ``.npz`` to names without one).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if _is_remote(path):
        from etils import epath

        final = epath.Path(path)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"
        try:
            yield tmp
            tmp.rename(final)
        finally:
            if tmp.exists():
                tmp.unlink()
        return
    final = pathlib.Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars and arrays as Python numbers and lists, paths as strings, and
    non-finite floats as None, so ``json.dumps`` writes strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy arrays and scalars
        return jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def atomic_write(path: PathLike, data: Union[bytes, str], fsync: bool = True) -> None:
    """Writes ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file and a rename."""
    if isinstance(data, str):
        data = data.encode()
    with atomic_file(path) as tmp:
        if _is_remote(path):
            tmp.write_bytes(data)
            return
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 1,
                      sort_keys: bool = True, default: Optional[Callable] = None) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically."""
    atomic_write(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default))


@contextlib.contextmanager
def atomic_dir(path: PathLike, replace: bool = False,
               may_replace: Optional[Callable[[pathlib.Path], bool]] = None,
               keep_existing: bool = False) -> Iterator[pathlib.Path]:
    """Yields an empty temporary directory beside ``path``; moves it to ``path`` when the block ends.

    Args:
      path: the final directory.
      replace: whether an existing non-empty ``path`` may be replaced. An empty one always may.
      may_replace: optional check run on an existing non-empty ``path`` before anything is written;
        returning False refuses (so a command never deletes a directory it did not write).

    Raises:
      FileExistsError: ``path`` exists, is not empty, and ``replace`` is False or ``may_replace``
        refuses it. Nothing is written or deleted then.

    With ``keep_existing`` (content-addressed caches), a directory that another process completed at
    ``path`` while this one was writing wins, and this one's copy is discarded.
    """
    final = pathlib.Path(path).absolute()
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory")
    occupied = final.exists() and any(final.iterdir())
    if occupied and not replace and not keep_existing:
        raise FileExistsError(f"{final} exists and is not empty; pass overwrite/replace to replace it")
    if occupied and may_replace is not None and not may_replace(final):
        raise FileExistsError(f"{final} exists and was not written by this command; refusing to "
                              f"replace it (choose another directory)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if keep_existing and final.exists() and any(final.iterdir()):
            return
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process renamed its copy into place between the check above and this
                # rename (ENOTEMPTY/EEXIST): with keep_existing theirs wins, as above.
                if not (keep_existing and final.is_dir() and any(final.iterdir())):
                    raise
                return
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
