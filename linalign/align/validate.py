"""Input checks for paired embeddings, with errors that name the problem.

Checks run on the host (numpy) before anything touches a device or the disk, so a bad input
never leaves half-accumulated statistics or a partial checkpoint behind.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


class AlignInputError(ValueError):
    """Paired embeddings are unusable: wrong rank, dtype, shape, empty, or non-finite."""


def _describe(x: Any) -> str:
    return f"{type(x).__name__} with shape {getattr(x, 'shape', '?')} dtype {getattr(x, 'dtype', '?')}"


def check_matrix(x: Any, side: str, *, dim: Optional[int] = None, allow_empty: bool = False,
                 check_finite: bool = True, row_offset: int = 0) -> np.ndarray:
    """Validates one side of a batch of embeddings.

    Args:
      x: [n, d] embeddings (numpy or jax array).
      side: name used in messages, e.g. "source (z_b)".
      dim: expected width d, if known.
      allow_empty: accept n == 0.
      check_finite: scan for NaN/Inf and name the first bad row.
      row_offset: added to row indices in messages (position of this batch in a stream).

    Returns:
      ``x`` as a numpy-compatible array (not copied when already numpy).

    Raises:
      AlignInputError: naming the side and the problem.
    """
    if x is None:
        raise AlignInputError(f"{side}: got None instead of an [n, d] array")
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = np.asarray(x)
        dtype = x.dtype
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise AlignInputError(
            f"{side}: embeddings must be floating point, got dtype {dtype} "
            "(integer/bool/object arrays are refused rather than silently cast)")
    ndim = len(x.shape)
    if ndim != 2:
        raise AlignInputError(f"{side}: expected a rank-2 [n, d] array, got {_describe(x)}")
    n, d = x.shape
    if n == 0 and not allow_empty:
        raise AlignInputError(f"{side}: empty input (0 rows)")
    if d == 0:
        raise AlignInputError(f"{side}: embeddings have width 0")
    if dim is not None and d != dim:
        raise AlignInputError(f"{side}: expected width {dim}, got {d} ({_describe(x)})")
    if check_finite and n:
        xn = np.asarray(x)
        # Fast screen: a NaN/Inf anywhere in a row makes its sum non-finite; one BLAS gemv
        # instead of an [n, d] boolean temporary. Only on a hit (or an overflowing sum) is
        # the exact per-element scan run.
        if np.all(np.isfinite(xn @ np.ones(d, xn.dtype))):
            return xn
        finite_rows = np.isfinite(xn).all(axis=1)
        if not finite_rows.all():
            bad = int(np.argmin(finite_rows))
            col = int(np.argmin(np.isfinite(xn[bad])))
            raise AlignInputError(
                f"{side}: row {bad + row_offset} contains a non-finite value "
                f"({xn[bad, col]!r} at column {col}); {int((~finite_rows).sum())} bad row(s) in "
                "this batch")
        return xn
    return x


def check_pair(z_b: Any, z_a: Any, *, d_b: Optional[int] = None, d_a: Optional[int] = None,
               mask: Any = None, allow_empty: bool = False, check_finite: bool = True,
               row_offset: int = 0) -> tuple[Any, Any, Any]:
    """Validates a batch of paired source/target embeddings.

    Args:
      z_b: [n, d_b] source-model embeddings.
      z_a: [n, d_a] target-model embeddings for the same n texts, same order.
      d_b, d_a: expected widths, if known.
      mask: optional [n] row weights in {0, 1} (bool or numeric).
      allow_empty, check_finite, row_offset: see ``check_matrix``.

    Returns:
      (z_b, z_a, mask) as arrays.

    Raises:
      AlignInputError: naming the side and the problem.
    """
    z_b = check_matrix(z_b, "source (z_b)", dim=d_b, allow_empty=allow_empty,
                       check_finite=check_finite, row_offset=row_offset)
    z_a = check_matrix(z_a, "target (z_a)", dim=d_a, allow_empty=allow_empty,
                       check_finite=check_finite, row_offset=row_offset)
    if z_b.shape[0] != z_a.shape[0]:
        raise AlignInputError(
            f"row counts differ: source (z_b) has {z_b.shape[0]} rows, target (z_a) has "
            f"{z_a.shape[0]}; rows must be the same texts in the same order")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (z_b.shape[0],):
            raise AlignInputError(f"mask: expected shape ({z_b.shape[0]},), got {m.shape}")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise AlignInputError("mask: values must be 0/1 (or bool)")
        mask = m
    return z_b, z_a, mask
