"""The command-line vocabulary every ``linalign`` subcommand shares, defined once.

A flag that means the same thing in two commands is defined here, with one name, one default
and one help text, so the commands cannot drift apart:

  --source / --target   embeddings of the same texts (store directory or .npy)
  --out_dir             where a command writes its results
  --batch_size          texts per forward pass (extraction) or rows per step (fitting)
  --cache_dir           linalign's cache root
  --mesh                device mesh, ``linalign.mesh`` syntax, checked before any work starts
  --lam                 lambda spec (``linalign.align.lambdas.LambdaSpec``), checked up front
  --pooling             pooling of final hidden states; one default everywhere (mean)
  --dtype               compute dtype (the choices depend on the command)
  --model               asset name, checkpoint path or Hugging Face org/name (local cache)

Each ``define_*`` returns the absl ``FlagHolder`` (``.value``). Old names of renamed flags are
kept as hidden aliases (``alias``) so existing command lines keep working.
"""

from __future__ import annotations

from typing import Optional, Sequence

from absl import flags

# Extraction: texts per forward pass. Fitting: rows per accumulation step.
EXTRACT_BATCH_SIZE = 32
FIT_BATCH_SIZE = 8192
# The paper's choice for open models: mean over real (non-padding) tokens. "default" asks for
# each checkpoint's own pooling (mean for sentence encoders, last token for causal LMs).
POOLING_CHOICES = ("mean", "last", "first", "default")
POOLING_DEFAULT = "mean"

# Names of aliases, kept out of --help (they are the old spellings).
HIDDEN: set[str] = set()


def alias(old: str, new: str) -> None:
    """Keeps ``--old`` working as a hidden alias of ``--new``."""
    if old not in flags.FLAGS:
        flags.DEFINE_alias(old, new)
    HIDDEN.add(old)


def _check(fn):
    def checker(value):
        if value is None:
            return True
        try:
            fn(value)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True
    return checker


def define_source_target(what: str = "embeddings") -> tuple:
    """--source / --target: the two models' {what} of the same texts, row-aligned."""
    src = flags.DEFINE_string("source", None, f"Source-model (Z_B) {what}: store directory or "
                              "[n, d_b] .npy.")
    tgt = flags.DEFINE_string("target", None, f"Target-model (Z_A) {what}: store directory or "
                              "[n, d_a] .npy, row i the same text as the source's row i.")
    return src, tgt


def define_out_dir(help_text: str = "Output directory.") -> flags.FlagHolder:
    return flags.DEFINE_string("out_dir", None, help_text)


def define_batch_size(kind: str, help_text: Optional[str] = None) -> flags.FlagHolder:
    """--batch_size: kind "extract" (texts per forward pass) or "fit" (rows per step)."""
    default = {"extract": EXTRACT_BATCH_SIZE, "fit": FIT_BATCH_SIZE}[kind]
    text = help_text or {"extract": "Texts per forward pass.",
                         "fit": "Rows per accumulation step."}[kind]
    holder = flags.DEFINE_integer("batch_size", default, text, lower_bound=1)
    return holder


def define_cache_dir() -> flags.FlagHolder:
    return flags.DEFINE_string("cache_dir", None, "linalign cache root: assets and cached hidden "
                               "states (default $LINALIGN_CACHE or ~/.cache/linalign).")


def define_mesh(help_extra: str = "") -> flags.FlagHolder:
    from linalign.mesh import parse_axes

    holder = flags.DEFINE_string("mesh", None, "Device mesh, e.g. data=8, data=4,model=2 or "
                                 "data=-1 (all devices)" + (f"; {help_extra}" if help_extra else "."))
    flags.register_validator("mesh", _check(parse_axes))
    return holder


def define_lam(default: str = "auto", help_extra: str = "") -> flags.FlagHolder:
    from linalign.align.lambdas import LambdaSpec

    holder = flags.DEFINE_string(
        "lam", default, "Lambda spec: auto (5-fold CV), cv:K, gcv, rel:F (F x mean eigenvalue of "
        "C_bb) or an absolute number (on the scale of C_bb, a sum over rows)"
        + (f"; {help_extra}" if help_extra else "."))
    flags.register_validator("lam", _check(LambdaSpec.parse))
    return holder


def define_fit_policy() -> None:
    """The lambda policy's flags, shared by the single-host and the distributed fit."""
    define_lam()
    flags.DEFINE_list("lam_grid", None, "Candidate lambdas (default: 13 values, 1e-6..1e2 x C_bb's "
                      "mean eigenvalue).")
    flags.DEFINE_integer("folds", 5, "Cross-validation folds accumulated in the streaming pass.")
    flags.DEFINE_integer("seed", 0, "Seed of the fold and held-out assignments.")
    flags.DEFINE_float("val_fraction", 0.1, "Fraction of rows held out to score the map.")


def define_pooling() -> flags.FlagHolder:
    return flags.DEFINE_enum("pooling", POOLING_DEFAULT, list(POOLING_CHOICES),
                             "Pooling of hidden states: mean over real tokens (the paper's "
                             "choice), last, first, or default (each checkpoint's own: mean for "
                             "encoders, last token for causal LMs).")


def pooling_arg(value: str) -> Optional[str]:
    """The ``pooling=`` argument of the extraction functions for a --pooling value."""
    return None if value == "default" else value


def define_dtype(choices: Sequence[str], default: str, help_text: str) -> flags.FlagHolder:
    return flags.DEFINE_enum("dtype", default, list(choices), help_text)


def define_model(help_extra: str = "") -> flags.FlagHolder:
    return flags.DEFINE_string("model", None, "Model: asset name (linalign assets "
                               "--list), checkpoint path (.gguf or Hugging Face directory), or "
                               "org/name[@revision] from the local Hugging Face cache"
                               + (f"; {help_extra}" if help_extra else "."))
