"""Adjustments that let Concrete ML 1.9 (and brevitas 0.10.2) run on torch 2.13.

Applied only by the Concrete ML path (``linalign.fhe.concrete_backend`` calls :func:`apply`
before it imports ``concrete.ml``); nothing in ``linalign`` applies them at package import.
:func:`apply` is idempotent and each adjustment is narrow:

1. ``torch.onnx.export`` defaults to ``dynamo=True`` on torch 2.13. The dynamo exporter needs
   ``onnxscript`` (not a dependency of Concrete ML) and emits graphs Concrete ML's ONNX importer
   was not written for; Concrete ML (``concrete/ml/onnx/convert.py``), hummingbird (used for every
   ``concrete.ml.sklearn`` linear model) and brevitas all call ``torch.onnx.export`` without the
   argument. The wrapper only changes the *default*: a caller passing ``dynamo=...`` gets exactly
   what it asked for.
2. torch 2.13 removed named tensors: ``Tensor.rename`` (and ``names``/``refine_names``) no longer
   exist, so brevitas' ``QuantLayerMixin.unpack_input`` (``inp.value.rename(None)``, run on every
   eager forward of a quantized layer) raises ``AttributeError``. Tensors can no longer carry
   names, so "drop all names" is the identity; :func:`_rename_drop_names` restores exactly that
   call and refuses any attempt to set names, which torch 2.13 cannot honour.

``pkg_resources`` deprecation warnings printed by ``concrete/__init__.py`` are harmless and left
alone.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

_MARK = "_linalign_compat"
_applied = False


def _onnx_export_default_dynamo_false(export_fn):
    """Wraps ``torch.onnx.export`` so that ``dynamo`` defaults to False."""

    @functools.wraps(export_fn)
    def export(*args: Any, **kwargs: Any):
        kwargs.setdefault("dynamo", False)
        return export_fn(*args, **kwargs)

    setattr(export, _MARK, True)
    export.__wrapped_original__ = export_fn  # lets tests and callers reach the original
    return export


def _rename_drop_names(self, *names: Any, **rename_map: Any):
    """``Tensor.rename(None)``: drops dimension names, which torch 2.13 tensors never have.

    Args:
      *names: must be exactly ``(None,)`` (the only form brevitas uses).
      **rename_map: must be empty.

    Returns:
      ``self``: a tensor without names is already what ``rename(None)`` returned.

    Raises:
      NotImplementedError: for any call that would set names (named tensors were removed).
    """
    if names == (None,) and not rename_map:
        return self
    raise NotImplementedError(
        f"Tensor.rename{names!r}{rename_map!r}: torch 2.13 removed named tensors; "
        "linalign's compatibility shim only supports rename(None) (drop all names)"
    )


setattr(_rename_drop_names, _MARK, True)


def needs_onnx_patch() -> bool:
    """True when ``torch.onnx.export`` exists and defaults to the dynamo exporter."""
    import torch.onnx

    export_fn = torch.onnx.export
    if getattr(export_fn, _MARK, False):
        return False
    try:
        param = inspect.signature(export_fn).parameters.get("dynamo")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is True


def needs_rename_patch() -> bool:
    """True when torch tensors lack a working ``rename`` (named tensors removed)."""
    import torch

    return not hasattr(torch.Tensor, "rename")


def apply() -> dict[str, bool]:
    """Applies every adjustment this torch build needs; safe to call any number of times.

    Returns:
      {"onnx_export_dynamo_false": bool, "tensor_rename_none": bool}: which adjustments are
      active after the call (True also when applied by an earlier call).
    """
    global _applied
    import torch
    import torch.onnx

    if needs_onnx_patch():
        torch.onnx.export = _onnx_export_default_dynamo_false(torch.onnx.export)
    if needs_rename_patch():
        # Assigned on the Python Tensor class: brevitas calls it on plain tensors and on
        # nn.Parameter (a subclass), both of which resolve through torch.Tensor.
        torch.Tensor.rename = _rename_drop_names
    _applied = True
    return status()


def status() -> dict[str, bool]:
    """Which adjustments are currently installed (see :func:`apply`)."""
    import torch
    import torch.onnx

    return {
        "onnx_export_dynamo_false": bool(getattr(torch.onnx.export, _MARK, False)),
        "tensor_rename_none": bool(getattr(getattr(torch.Tensor, "rename", None), _MARK, False)),
    }
