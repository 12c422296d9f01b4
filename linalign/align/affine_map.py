"""AffineMap: the fitted z_a ~ z_b W + b, its provenance, and its one on-disk format.

A saved map is a single safetensors file (conventionally ``map.safetensors``, beside
report.json / report.md in a fit's output folder):

  tensors       W [d_b, d_a], b [d_a]  (float32 normally; ``metadata["dtype"]`` records the
                dtype the map was solved in)
  __metadata__  {"format": "linalign.affine_map", "format_version": "1",
                 "metadata": <JSON of MapMetadata>}

It is readable without linalign: ``safetensors.numpy.load_file(path)`` gives W and b and
``safetensors.safe_open(path, "np").metadata()`` the header. Writes go through
``linalign.atomic`` (temporary name, then rename). Maps saved by linalign <= 0.1 as an orbax
folder (params/ + metadata.json) are refused with a message naming the converter
``python -m linalign.align.convert_map OLD_DIR NEW_FILE``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from linalign.align.validate import AlignInputError, check_matrix
from linalign.atomic import atomic_write, jsonable

FORMAT = "linalign.affine_map"
FORMAT_VERSION = "1"
MAP_FILE = "map.safetensors"
_HIGHEST = jax.lax.Precision.HIGHEST

PathLike = Union[str, os.PathLike]

CONVERT_HINT = ("maps are now one safetensors file (W, b and a JSON metadata header, format "
                f"{FORMAT!r} version {FORMAT_VERSION}); convert this one with "
                "`python -m linalign.align.convert_map OLD_DIR NEW_FILE`")


class MapFormatError(ValueError):
    """A saved map is missing pieces, truncated, corrupt, inconsistent, or of an old format."""


def _version() -> str:
    import linalign

    return linalign.__version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class MapMetadata:
    """Provenance of a fitted map (stored as JSON in the safetensors header).

    Attributes:
      d_b: source width; d_a: target width.
      source_model / target_model: names of the models whose embeddings were aligned.
      source_fingerprint / target_fingerprint: identity of the embeddings (store text/model
        fingerprints or array hashes).
      pooling: how per-token states were pooled ("mean", "last", ...), "per_token", or "".
      layer: hidden layer the states came from (None: the final one).
      lam: absolute ridge strength used (on the scale of C_bb, a sum over rows).
      lam_spec: what was asked ("auto", "1e-4", "rel:1e-3", ...).
      lam_selection: how lam was obtained ("kfold-5", "gcv", "fixed", "fixed-relative").
      n: training rows.
      heldout: {"r2", "cosine"} on held-out rows, or None.
      dtype: dtype the map was solved in ("float64" for every solve since format 1).
      scale: "none" or "std" (per-dimension source scaling used in the fit, undone in W).
      data_fingerprint: identity of the fitting data as a whole (optional).
      linalign_version, created: writer version and UTC ISO time (set on save when empty).
      extra: free-form JSON-serialisable details (lambda grid and scores, training R^2, ...).
    """

    d_b: int
    d_a: int
    source_model: str = ""
    target_model: str = ""
    source_fingerprint: str = ""
    target_fingerprint: str = ""
    pooling: str = ""
    layer: Optional[int] = None
    lam: float = 0.0
    lam_spec: str = ""
    lam_selection: str = ""
    n: int = 0
    heldout: Optional[dict] = None
    dtype: str = "float64"
    scale: str = "none"
    data_fingerprint: str = ""
    linalign_version: str = ""
    created: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> "MapMetadata":
        if not isinstance(d, dict):
            raise MapFormatError(f"map metadata must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("d_b", "d_a") if k not in d]
        if missing:
            raise MapFormatError(f"map metadata lacks {missing}")
        # Unknown keys from a newer writer are kept in ``extra`` rather than refused.
        known = {k: v for k, v in d.items() if k in names}
        extra = dict(known.pop("extra", None) or {})
        extra.update({k: v for k, v in d.items() if k not in names})
        try:
            return cls(**known, extra=extra)
        except TypeError as e:
            raise MapFormatError(f"map metadata is malformed: {e}") from None


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
        # Stored and applied in float32 (the solve itself is float64; metadata.dtype says so).
        w = jnp.asarray(np.asarray(w, np.float32))
        b = jnp.asarray(np.asarray(b, np.float32))
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
    def save(self, path: PathLike, overwrite: bool = False) -> pathlib.Path:
        """Writes the map as one safetensors file, atomically.

        Args:
          path: the file (``*.safetensors``); any other path is taken as a directory (created
            if needed) to hold ``map.safetensors``.
          overwrite: replace an existing file.

        Returns:
          the file written.

        Raises:
          FileExistsError: the file exists and ``overwrite`` is False.
        """
        from safetensors.numpy import save as st_save

        target = pathlib.Path(path).absolute()
        if target.is_dir() or target.suffix != ".safetensors":
            target = target / MAP_FILE
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        meta = self.metadata
        if not meta.linalign_version:
            meta.linalign_version = _version()
        if not meta.created:
            meta.created = _now()
        header = {"format": FORMAT, "format_version": FORMAT_VERSION,
                  "metadata": json.dumps(jsonable(meta.to_json()), sort_keys=True,
                                         allow_nan=False)}
        data = st_save({"W": np.ascontiguousarray(np.asarray(self.w)),
                        "b": np.ascontiguousarray(np.asarray(self.b))}, metadata=header)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
        return target

    @classmethod
    def load(cls, path: PathLike) -> "AffineMap":
        """Loads a map written by ``save``.

        Args:
          path: the ``.safetensors`` file, or a directory holding ``map.safetensors``.

        Raises:
          FileNotFoundError: nothing there.
          MapFormatError: truncated or corrupt file, arrays that do not match the metadata, or
            an old orbax map directory (the message names the converter).
        """
        p = pathlib.Path(path).absolute()
        if p.is_dir():
            if (p / MAP_FILE).is_file():
                p = p / MAP_FILE
            elif (p / "params").is_dir() and (p / "metadata.json").is_file():
                raise MapFormatError(f"{p} is a map in the old orbax layout; {CONVERT_HINT}")
            elif (p / "map").is_dir():
                raise MapFormatError(f"{p / 'map'} is a map in the old orbax layout; {CONVERT_HINT}")
            else:
                raise FileNotFoundError(f"no saved map in {p} (expected {MAP_FILE})")
        elif not p.is_file():
            raise FileNotFoundError(f"no saved map at {p}")
        tensors, header = read_map_file(p)
        try:
            meta = MapMetadata.from_json(json.loads(header["metadata"]))
        except (json.JSONDecodeError, TypeError) as e:
            raise MapFormatError(f"{p}: the metadata JSON in its header is corrupt: {e}") from None
        w, b = tensors["W"], tensors["b"]
        if w.shape != (meta.d_b, meta.d_a) or b.shape != (meta.d_a,):
            raise MapFormatError(f"{p}: W {w.shape} / b {b.shape} do not match the metadata's "
                                 f"d_b={meta.d_b}, d_a={meta.d_a}")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise MapFormatError(f"{p}: W or b contains non-finite values")
        return cls(w, b, meta)

    def __repr__(self) -> str:
        m = self.metadata
        sel = f" ({m.lam_selection})" if m.lam_selection else ""
        held = ""
        if m.heldout:
            held = (f", held-out R^2={m.heldout.get('r2', float('nan')):.4f}, "
                    f"cosine={m.heldout.get('cosine', float('nan')):.4f}")
        elif isinstance(m.extra, dict) and m.extra.get("cv_r2") is not None:
            held = f", cv R^2={m.extra['cv_r2']:.4f}"
        return (f"AffineMap({m.source_model or '?'} [{self.d_b}] -> {m.target_model or '?'} "
                f"[{self.d_a}], lam={m.lam:.4g}{sel}, n={m.n}{held})")


def read_map_file(path: PathLike) -> tuple[dict, dict]:
    """(tensors {"W", "b"} as numpy, header metadata) of a map file, checked.

    Raises:
      MapFormatError: not a safetensors file, truncated, wrong format name/version, missing or
        extra tensors.
    """
    from safetensors.numpy import load as st_load

    p = pathlib.Path(path)
    raw = p.read_bytes()
    try:
        tensors = st_load(raw)
        header = _header(raw)
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise MapFormatError(f"{p} is not a readable map file (truncated or corrupt: "
                             f"{type(e).__name__}: {e})") from None
    if header.get("format") != FORMAT:
        raise MapFormatError(f"{p} is a safetensors file but not a linalign map "
                             f"(format {header.get('format')!r}, expected {FORMAT!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise MapFormatError(f"{p}: map format version {header.get('format_version')!r} is not "
                             f"supported (this linalign reads version {FORMAT_VERSION})")
    if set(tensors) != {"W", "b"} or "metadata" not in header:
        raise MapFormatError(f"{p} must hold tensors W and b and a metadata header, got "
                             f"tensors {sorted(tensors)}")
    return tensors, header


def _header(raw: bytes) -> dict:
    """The ``__metadata__`` of a safetensors byte string (8-byte length + JSON header)."""
    if len(raw) < 8:
        raise ValueError("file shorter than the safetensors length prefix")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ValueError(f"header of {size} bytes runs past the end of the file")
    return json.loads(raw[8:8 + size]).get("__metadata__") or {}


def array_fingerprint(*arrays: Any) -> str:
    """sha256 over shapes, dtypes and bytes of arrays (identity of in-memory fitting data)."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
