"""Converts a map saved in the old orbax layout (params/ + metadata.json) to the map file format.

  python -m linalign.align.convert_map OLD_DIR NEW_FILE

OLD_DIR is the old map directory (or a fit output folder holding it as ``map/``); NEW_FILE the
``.safetensors`` file to write (refused if it exists). The old metadata fields are carried
over (``lam``, ``n``, models, pooling, data fingerprint, ``extra``); the lambda's selection
method is taken from ``extra["lambda_selection"]`` when the old writer recorded it.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from linalign.align.affine_map import AffineMap, MapFormatError, MapMetadata


def convert(old_dir, new_file) -> pathlib.Path:
    """Reads the old orbax map at ``old_dir`` and writes it as ``new_file``; returns the path."""
    old = pathlib.Path(old_dir)
    if (old / "map" / "params").is_dir():
        old = old / "map"
    if not ((old / "params").is_dir() and (old / "metadata.json").is_file()):
        raise MapFormatError(f"{old} is not an old-layout map directory (params/ + metadata.json)")
    try:
        meta = json.loads((old / "metadata.json").read_text())
    except json.JSONDecodeError as e:
        raise MapFormatError(f"{old / 'metadata.json'} is corrupt: {e}") from None
    import orbax.checkpoint as ocp  # lazy: only old maps need it

    try:
        params = ocp.PyTreeCheckpointer().restore((old / "params").absolute())
    except Exception as e:  # orbax raises many types for a damaged checkpoint
        raise MapFormatError(f"{old / 'params'} cannot be restored: {type(e).__name__}: {e}") from None
    if not isinstance(params, dict) or set(params) != {"W", "b"}:
        raise MapFormatError(f"{old / 'params'} does not hold W and b")
    extra = dict(meta.get("extra") or {})
    new = MapMetadata(
        d_b=int(meta["d_b"]), d_a=int(meta["d_a"]), source_model=meta.get("source_model", ""),
        target_model=meta.get("target_model", ""), pooling=meta.get("pooling", ""),
        lam=float(meta.get("lam", 0.0)), n=int(meta.get("n", 0)),
        lam_selection=str(extra.pop("lambda_selection", "")),
        data_fingerprint=meta.get("data_fingerprint", ""), dtype="unknown",
        extra={**extra, "converted_from": "orbax map format 1"})
    return AffineMap(np.asarray(params["W"]), np.asarray(params["b"]), new).save(new_file)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(convert(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
