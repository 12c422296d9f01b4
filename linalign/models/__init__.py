"""Flax ports of Hugging Face language models, one family module each.

The registry maps a checkpoint's ``model_type`` to the family module that serves it (see the
contract in ``linalign.models.base``). Family modules are imported lazily so that importing
``linalign.models`` stays cheap.

    from linalign import models
    fam = models.family_for("bert")        # the linalign.models.bert module
    cfg = fam.Config.from_hf_config(hf_config_dict)
"""

from __future__ import annotations

import importlib
import types

from linalign.models.base import UnsupportedConfigError

# HF model_type -> module name under linalign.models.
FAMILIES: dict[str, str] = {
    "bert": "bert",
    "mpnet": "mpnet",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def family_for(model_type: str) -> types.ModuleType:
    """The family module serving ``model_type``.

    Raises:
      UnsupportedConfigError: unknown model_type (the message lists the supported ones), or a
        family module that is not importable.
    """
    name = FAMILIES.get(model_type)
    if name is None:
        raise UnsupportedConfigError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}")
    try:
        mod = importlib.import_module(f"linalign.models.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"linalign.models.{name}":
            raise UnsupportedConfigError(
                f"model_type {model_type!r} maps to linalign.models.{name}, which is not available "
                "in this installation") from None
        raise
    if model_type not in getattr(mod, "MODEL_TYPES", ()):
        raise UnsupportedConfigError(f"linalign.models.{name} does not list {model_type!r} in "
                                     "MODEL_TYPES")
    return mod


def family_name(module: types.ModuleType) -> str:
    """"bert" for linalign.models.bert, etc."""
    return module.__name__.rsplit(".", 1)[-1]
