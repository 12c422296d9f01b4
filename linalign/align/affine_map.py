"""AffineMap: the fitted z_a ~ z_b W + b, its provenance, and an atomic on-disk format.

On-disk layout of a saved map directory::

    params/          orbax checkpoint of {"W": [d_b, d_a], "b": [d_a]}
    metadata.json    MapMetadata as JSON (format version, models, dims, lambda, ...)

``save`` writes everything under a hidden temporary sibling directory and renames it into place
with ``os.replace``, so an interrupted save leaves either the old map or nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from linalign.align.validate import AlignInputError, check_matrix
from linalign.atomic import atomic_dir, atomic_write_json

FORMAT_VERSION = 1
METADATA = "metadata.json"
PARAMS = "params"
_HIGHEST = jax.lax.Precision.HIGHEST

PathLike = Union[str, os.PathLike]


class MapFormatError(ValueError):
    """A saved map directory is missing, corrupt, or of an unknown format version."""


@dataclasses.dataclass(frozen=True)
class MapMetadata:
    """Provenance of a fitted map.

    Attributes:
      d_b: source width; d_a: target width.
      source_model / target_model: names of the models whose embeddings were aligned.
      lam: ridge strength used (on the scale of C_bb, a sum over rows).
      pooling: how per-token states were pooled ("mean", "last", ...), or "" if unknown.
      n: training rows.
      data_fingerprint: identity of the fitting data (text fingerprint or array hash).
      format_version: on-disk format version.
      extra: free-form JSON-serialisable details (selection scores, R^2, ...).
    """

    d_b: int
    d_a: int
    source_model: str = ""
    target_model: str = ""
    lam: float = 0.0
    pooling: str = ""
    n: int = 0
    data_fingerprint: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "MapMetadata":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = [k for k in ("d_b", "d_a", "format_version") if k not in d]
        if unknown or missing:
            raise MapFormatError(f"map metadata has unknown keys {unknown} / lacks {missing}")
        if d["format_version"] != FORMAT_VERSION:
            raise MapFormatError(f"map format version {d['format_version']} is not supported "
                                 f"(this linalign reads version {FORMAT_VERSION})")
        return cls(**d)


@jax.jit
def _apply(w_ba, b_a, z_nb):
    return jnp.dot(z_nb.astype(w_ba.dtype), w_ba, precision=_HIGHEST) + b_a


@jax.jit
def _r2_cos(pred_na, target_na):
    pred_na = pred_na.astype(jnp.float32)
    target_na = target_na.astype(jnp.float32)
    sse = jnp.sum((pred_na - target_na) ** 2)
    sst = jnp.sum((target_na - jnp.mean(target_na, axis=0)) ** 2)
    num = jnp.sum(pred_na * target_na, axis=1)
    den = jnp.linalg.norm(pred_na, axis=1) * jnp.linalg.norm(target_na, axis=1)
    return 1 - sse / sst, jnp.mean(num / jnp.maximum(den, 1e-30))


def r2_score(pred_na, target_na) -> float:
    """Pooled R^2 = 1 - SSE / SST over all outputs (SST about the target's column means)."""
    return float(_r2_cos(jnp.asarray(pred_na), jnp.asarray(target_na))[0])


def mean_cosine(pred_na, target_na) -> float:
    """Mean over rows of cos(pred_i, target_i)."""
    return float(_r2_cos(jnp.asarray(pred_na), jnp.asarray(target_na))[1])


class AffineMap:
    """z_a_hat = z_b W + b, with metadata.

    Args:
      w: [d_b, d_a] weights.
      b: [d_a] bias.
      metadata: MapMetadata (d_b/d_a are checked against ``w``); or None for a bare map.
    """

    def __init__(self, w, b, metadata: Optional[MapMetadata] = None):
        w = jnp.asarray(w)
        b = jnp.asarray(b)
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise AlignInputError(f"AffineMap needs W [d_b, d_a] and b [d_a], got {w.shape}, {b.shape}")
        if metadata is None:
            metadata = MapMetadata(d_b=int(w.shape[0]), d_a=int(w.shape[1]))
        if (metadata.d_b, metadata.d_a) != tuple(w.shape):
            raise AlignInputError(f"metadata dims ({metadata.d_b}, {metadata.d_a}) do not match "
                                  f"W {tuple(w.shape)}")
        self.w, self.b, self.metadata = w, b, metadata

    @property
    def d_b(self) -> int:
        return int(self.w.shape[0])

    @property
    def d_a(self) -> int:
        return int(self.w.shape[1])

    def apply(self, z_b) -> jax.Array:
        """Maps source embeddings into the target space.

        Args:
          z_b: [..., d_b] source embeddings (any leading batch dims).

        Returns:
          [..., d_a] mapped embeddings.

        Raises:
          AlignInputError: last dimension is not d_b.
        """
        shape = np.shape(z_b)
        if len(shape) == 0 or shape[-1] != self.d_b:
            src = self.metadata.source_model or "the source model"
            raise AlignInputError(
                f"this map expects source embeddings of width {self.d_b} ({src}), got an array of "
                f"shape {tuple(shape)}; was it fitted for a different model or pooling?")
        z = jnp.asarray(z_b)
        if not jnp.issubdtype(z.dtype, jnp.floating):
            raise AlignInputError(f"source embeddings must be floating point, got {z.dtype}")
        flat = z.reshape(-1, self.d_b)
        return _apply(self.w, self.b, flat).reshape(*shape[:-1], self.d_a)

    __call__ = apply

    def evaluate(self, z_b, z_a) -> dict[str, float]:
        """{"r2": pooled R^2, "cosine": mean row cosine} of the mapped z_b against z_a."""
        z_a = check_matrix(z_a, "target (z_a)", dim=self.d_a)
        pred = self.apply(check_matrix(z_b, "source (z_b)", dim=self.d_b))
        if pred.shape[0] != z_a.shape[0]:
            raise AlignInputError(f"row counts differ: {pred.shape[0]} source vs {z_a.shape[0]} target")
        r2, cos = _r2_cos(pred, jnp.asarray(z_a))
        return {"r2": float(r2), "cosine": float(cos)}

    # ------------------------------------------------------------------ persistence
    def save(self, directory: PathLike, overwrite: bool = False) -> pathlib.Path:
        """Writes the map to ``directory`` atomically (temp dir + rename).

        Raises:
          FileExistsError: ``directory`` exists and ``overwrite`` is False.
        """
        import orbax.checkpoint as ocp  # lazy: orbax is slow to import

        target = pathlib.Path(directory).absolute()
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        with atomic_dir(target, replace=True) as tmp:
            params = {"W": np.asarray(self.w), "b": np.asarray(self.b)}
            ckptr = ocp.PyTreeCheckpointer()
            ckptr.save(tmp / PARAMS, params)
            atomic_write_json(tmp / METADATA, self.metadata.to_json())
        return target

    @classmethod
    def load(cls, directory: PathLike) -> "AffineMap":
        """Loads a map written by ``save``.

        Raises:
          FileNotFoundError: no such directory / missing files.
          MapFormatError: corrupt metadata or params, or shapes that disagree with metadata.
        """
        import orbax.checkpoint as ocp

        path = pathlib.Path(directory).absolute()
        if not path.is_dir():
            raise FileNotFoundError(f"no saved map at {path}")
        for part in (METADATA, PARAMS):
            if not (path / part).exists():
                raise FileNotFoundError(f"{path} is not a saved map: {part} is missing")
        try:
            with open(path / METADATA) as f:
                meta = MapMetadata.from_json(json.load(f))
        except (json.JSONDecodeError, TypeError) as e:
            raise MapFormatError(f"{path / METADATA} is corrupt: {e}") from None
        try:
            restored = ocp.PyTreeCheckpointer().restore(path / PARAMS)
        except Exception as e:  # orbax raises many types for a damaged checkpoint
            raise MapFormatError(f"{path / PARAMS} cannot be restored: {type(e).__name__}: {e}") from None
        if not isinstance(restored, dict) or set(restored) != {"W", "b"}:
            raise MapFormatError(f"{path / PARAMS} does not hold W and b")
        w, b = np.asarray(restored["W"]), np.asarray(restored["b"])
        if w.shape != (meta.d_b, meta.d_a) or b.shape != (meta.d_a,):
            raise MapFormatError(f"{path}: W {w.shape} / b {b.shape} disagree with metadata dims "
                                 f"({meta.d_b}, {meta.d_a})")
        return cls(w, b, meta)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"AffineMap({m.source_model or '?'} [{self.d_b}] -> {m.target_model or '?'} "
                f"[{self.d_a}], lam={m.lam:g}, n={m.n})")


def array_fingerprint(*arrays: Any) -> str:
    """sha256 over shapes, dtypes and bytes of arrays (identity of in-memory fitting data)."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
