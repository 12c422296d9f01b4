"""Fit checkpoints: orbax-checkpoint for the arrays, plus a manifest of our own for integrity.

Layout under a checkpoint directory::

    orbax/<step>/...            orbax's step directory (state arrays + JSON metadata)
    manifests/<step>.json       size and sha256 of every file of that step, written last

Orbax already writes each step under a temporary name and renames it into place when it is
finalized, so a step directory that exists was completely written *by orbax*. The manifest
adds what orbax does not promise: that the bytes have not changed since (a flipped byte in a
tensorstore chunk would otherwise restore as silently wrong statistics, or fail with an
opaque decoder error) and that no file went missing. It is written (temporary name, then
``os.replace``) only after orbax finished the step, so:

  * step directory without a manifest: the run died between the two writes. The step is
    reported and skipped when looking for the latest checkpoint (the previous one is still
    complete, because old steps are deleted only after a newer manifest exists).
  * manifest present, file missing or different: ``CheckpointCorruptError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from linalign.distributed import runtime

from linalign.atomic import atomic_write

MANIFEST_VERSION = 1


class CheckpointCorruptError(ValueError):
    """A fit checkpoint is partial, corrupt, or does not belong to the fit being resumed."""


def _sha256(path: epath.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: epath.Path) -> dict[str, epath.Path]:
    out, todo = {}, [root]
    while todo:  # explicit walk: epath refuses recursive globs on object stores
        for p in todo.pop().iterdir():
            if p.is_dir():
                todo.append(p)
            else:
                out[str(p.relative_to(root))] = p
    return out


class FitCheckpointer:
    """Saves and restores (state pytree, JSON metadata) pairs by step, on every process.

    All methods are collective: every process calls them with the same step, because orbax
    writes each process's shards of the global state arrays and synchronizes between them.

    Args:
      directory: checkpoint root (local path or anything etils.epath opens, e.g. gs://).
      keep: complete checkpoints to keep; older ones are deleted after a newer one is complete.
    """

    def __init__(self, directory: os.PathLike | str, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = epath.Path(directory)
        self.manifest_dir = self.directory / "manifests"
        if jax.process_index() == 0:
            self.manifest_dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._mgr = ocp.CheckpointManager(
            self.directory / "orbax",
            options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                                 enable_async_checkpointing=False),
            item_names=("state", "meta"))

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / "orbax" / str(step)

    def _manifest_path(self, step: int) -> epath.Path:
        return self.manifest_dir / f"{step}.json"

    def all_steps(self) -> list[int]:
        self._mgr.reload()
        return sorted(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes a checkpoint; returns once it is complete (manifest written) on all processes.

        Args:
          step: batches consumed so far.
          state: pytree of (global) jax.Arrays.
          meta: JSON-serialisable metadata (positions of every process, fit fingerprint).
        """
        self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
        self._mgr.wait_until_finished()
        if jax.process_index() == 0:
            root = self._step_dir(step)
            files = {rel: {"size": p.stat().length, "sha256": _sha256(p)}
                     for rel, p in sorted(_files(root).items())}
            atomic_write(self._manifest_path(step), json.dumps(
                {"version": MANIFEST_VERSION, "step": step, "files": files}, indent=1))
        runtime.barrier(f"linalign_ckpt_manifest_{step}")
        complete = [s for s in self.all_steps() if self._manifest_path(s).exists()]
        # Every process must see the same list before anyone deletes (orbax's delete is
        # collective): a fast process 0 would otherwise delete a step a slower process has
        # not listed yet, and the two would call different barriers.
        runtime.barrier(f"linalign_ckpt_listed_{step}")
        for old in complete[:-self.keep]:
            self._mgr.delete(old)
            if jax.process_index() == 0:
                self._manifest_path(old).unlink(missing_ok=True)
        runtime.barrier(f"linalign_ckpt_pruned_{step}")

    def verify(self, step: int) -> None:
        """Checks step ``step`` against its manifest.

        Raises:
          CheckpointCorruptError: no manifest (incomplete write), a listed file missing or of
            the wrong size or sha256.
        """
        root, mpath = self._step_dir(step), self._manifest_path(step)
        if not root.exists():
            raise CheckpointCorruptError(f"checkpoint step {step} does not exist under {root}")
        if not mpath.exists():
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {root} has no manifest {mpath}: it was not completely "
                "written (the run stopped while saving) and cannot be trusted")
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointCorruptError(f"checkpoint manifest {mpath} is unreadable: {e}") from None
        if manifest.get("step") != step or not files:
            raise CheckpointCorruptError(f"checkpoint manifest {mpath} does not describe step {step}")
        present = _files(root)
        for rel, want in files.items():
            p = present.get(rel)
            if p is None:
                raise CheckpointCorruptError(
                    f"checkpoint step {step} is partial: file {rel} listed in {mpath} is missing "
                    f"from {root}")
            size = p.stat().length
            if size != want["size"]:
                raise CheckpointCorruptError(
                    f"checkpoint step {step} is corrupt: {root / rel} has {size} bytes, the "
                    f"manifest says {want['size']}")
            if _sha256(p) != want["sha256"]:
                raise CheckpointCorruptError(
                    f"checkpoint step {step} is corrupt: sha256 of {root / rel} does not match "
                    f"its manifest {mpath}")
        extra = sorted(set(present) - set(files))
        if extra:
            raise CheckpointCorruptError(
                f"checkpoint step {step} is corrupt: files {extra[:5]} in {root} are not in its "
                f"manifest")

    def latest_complete_step(self) -> Optional[int]:
        """Newest step with a manifest; newer steps written without one are reported and deleted.

        Raises:
          CheckpointCorruptError: the newest complete step fails verification. An older step is
            deliberately not used instead: a corrupted checkpoint needs a person to look at it.
        """
        steps = self.all_steps()
        unfinished = [s for s in steps if not self._manifest_path(s).exists()]
        complete = [s for s in steps if s not in unfinished]
        newer = [s for s in unfinished if not complete or s > complete[-1]]
        if newer:
            logging.warning("checkpoint step(s) %s under %s have no manifest (the run stopped "
                            "while saving them); deleting them", newer, self.directory)
            for s in newer:  # collective; frees the step number for the resumed run
                self._mgr.delete(s)
        if not complete:
            return None
        self.verify(complete[-1])
        return complete[-1]

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Verifies, then restores step ``step``.

        Args:
          step: a complete step.
          abstract_state: pytree of jax.ShapeDtypeStruct with the target shardings.

        Returns:
          (state, meta).
        """
        self.verify(step)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointCorruptError(
                f"checkpoint step {step} under {self.directory} passed its manifest check but "
                f"orbax could not restore it into the expected state shapes: {e}") from None
        return out["state"], out["meta"]

    def close(self) -> None:
        self._mgr.close()
