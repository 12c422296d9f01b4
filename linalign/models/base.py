"""What every model port shares: the output object, pooling, and the family contract.

A family module (``linalign/models/<family>.py``) exposes:

  MODEL_TYPES: tuple[str, ...]      Hugging Face ``model_type`` values it serves.
  Config                            frozen dataclass with ``from_hf_config(dict) -> Config``
                                    that raises ``UnsupportedConfigError`` for attributes it
                                    does not handle and for missing or ill-typed fields
                                    (``config_int`` / ``config_float``), and
                                    ``hidden_size`` / ``num_layers``.
  Model                             a Linen module; ``Model(config, dtype=...)`` and
                                    ``apply({"params": p}, input_ids, attention_mask,
                                    output_hidden_states=False, return_logits=True)``
                                    returns ``ModelOutput``.
  convert_params(tensors, config)   HF state dict (name -> np.ndarray) -> params pytree,
                                    written as a table of names and shape-checked transforms.
  IS_CAUSAL: bool

Linen was chosen over NNX because params stay a plain pytree: conversion tables map onto
nested dicts, and ``jit``/sharding apply to pure functions without module state.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp


class UnsupportedConfigError(ValueError):
    """A Hugging Face config carries an attribute or value a port does not implement."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or does not match its config."""


@flax.struct.dataclass
class ModelOutput:
    """Forward-pass outputs under stable names.

    Attributes:
      last_hidden_state: [batch, seq, hidden] final hidden state after the final norm
        (what feeds the LM head for causal models).
      hidden_states: optional tuple of [batch, seq, hidden], embeddings output first then
        one per layer (Hugging Face's convention: num_layers + 1 entries, the last one equal
        to ``last_hidden_state``).
      logits: optional [batch, seq, vocab].
    """

    last_hidden_state: jax.Array
    hidden_states: Optional[tuple] = None
    logits: Optional[jax.Array] = None


POOLINGS = ("mean", "last", "first")


def pool(hidden_bsd: jax.Array, mask_bs: jax.Array, pooling: str) -> jax.Array:
    """Pools per-token states over real (non-padding) tokens.

    Args:
      hidden_bsd: [batch, seq, hidden] states.
      mask_bs: [batch, seq] 1 for real tokens, 0 for padding (left or right).
      pooling: "mean" over real tokens, "last" real token, or "first" real token.

    Returns:
      [batch, hidden] float32 pooled states.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    h = hidden_bsd.astype(jnp.float32)
    m = mask_bs.astype(jnp.float32)
    if pooling == "mean":
        return (h * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)
    pos = jnp.arange(m.shape[1])
    if pooling == "last":
        idx = jnp.argmax(jnp.where(m > 0, pos, -1), axis=1)
    else:
        idx = jnp.argmax(jnp.where(m > 0, -pos, -m.shape[1] - 1), axis=1)
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]


def auto_axes(mesh):
    """The same mesh with Auto axis types (sharding propagated by XLA).

    ``jax.make_mesh`` gives Explicit axes from jax 0.9 on, under which an embedding gather from a
    sharded table needs a per-operation ``out_sharding``; linalign places params and batches
    with NamedShardings and lets jit propagate, so a user's Explicit mesh is used as Auto.
    Meshes are interned by jax, so the result is the same object on every call.
    """
    from jax.sharding import Mesh

    return Mesh(mesh.devices, mesh.axis_names)


def check_hf_config(hf: dict, handled: set[str], family: str, ignorable: set[str] = frozenset()) -> None:
    """Refuses any HF config attribute a port does not handle.

    Args:
      hf: the checkpoint's config.json as a dict.
      handled: attributes the port reads and implements.
      family: family name for the error message.
      ignorable: attributes that never change the forward pass (ids, dtype, provenance).

    Raises:
      UnsupportedConfigError naming every unknown attribute.
    """
    generic = {
        "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
        "bos_token_id", "eos_token_id", "pad_token_id", "_name_or_path", "use_cache",
        "return_dict", "output_hidden_states", "output_attentions", "torchscript",
        "tie_encoder_decoder", "is_decoder", "is_encoder_decoder", "add_cross_attention",
        "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "gradient_checkpointing",
        "initializer_range", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
        "cross_attention_hidden_size", "decoder_start_token_id", "sep_token_id", "pruned_heads",
        "tf_legacy_loss", "use_bfloat16", "_attn_implementation_autoset", "_attn_implementation",
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "temperature",
        "top_k", "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
        "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
        "diversity_penalty", "num_beam_groups", "typical_p", "encoder_no_repeat_ngram_size",
        "chat_template", "dtype", "quantization_config_ignored",
    }
    unknown = sorted(set(hf) - set(handled) - set(ignorable) - generic)
    if unknown:
        raise UnsupportedConfigError(
            f"{family} port does not handle config attribute(s) {unknown}; "
            "refusing rather than silently ignoring them")


_REQUIRED = object()


def _number(hf: dict, key: str, family: str, default, integer: bool) -> tuple[bool, Any]:
    """(absent, value): ``(True, default)`` when ``hf[key]`` is absent or null, else the value
    checked to be an integer (``integer``) or a real number; bools are neither."""
    if hf.get(key) is None:
        if default is _REQUIRED:
            raise UnsupportedConfigError(f"{family} config lacks required field {key!r}")
        return True, default
    v = hf[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer else numbers.Real):
        raise UnsupportedConfigError(f"{family} config field {key!r} is {v!r} ({type(v).__name__}); "
                                     f"expected {'an integer' if integer else 'a number'}")
    return False, v


def config_int(hf: dict, key: str, family: str, default: Any = _REQUIRED, minimum: int = 1) -> Optional[int]:
    """``hf[key]`` as an int of at least ``minimum``; ``default`` when absent or null.

    Raises:
      UnsupportedConfigError naming the field: absent without a default, not an integer (a
        string, a float, a bool), or below ``minimum`` (e.g. zero attention heads).
    """
    absent, v = _number(hf, key, family, default, integer=True)
    if not absent and v < minimum:
        raise UnsupportedConfigError(f"{family} config field {key!r} is {v}; expected at least {minimum}")
    return v if absent else int(v)


def config_float(hf: dict, key: str, family: str, default: Any = _REQUIRED, positive: bool = True) -> Optional[float]:
    """``hf[key]`` as a float (ints accepted), > 0 if ``positive``; ``default`` when absent or null.

    Raises:
      UnsupportedConfigError naming the field: absent without a default, not a number, or not
        positive.
    """
    absent, v = _number(hf, key, family, default, integer=False)
    if not absent and positive and not v > 0:
        raise UnsupportedConfigError(f"{family} config field {key!r} is {v}; expected a positive number")
    return v if absent else float(v)


@dataclasses.dataclass
class LoadedModel:
    """A port with its weights and tokenizer, as returned by ``linalign.checkpoints.load``.

    Attributes:
      name: human-readable model name (from the checkpoint or its path).
      family: family module name, e.g. "llama".
      config: the family's frozen Config.
      module: the Linen module.
      params: the params pytree (on device, possibly sharded).
      tokenizer: a ``linalign.models.tokenizer.Tokenizer``.
      is_causal: causal LM (has an LM head, supports generation) or bidirectional encoder.
      default_pooling: what the checkpoint's own pipeline pools with ("mean" for
        sentence-transformers encoders, "last" for causal LMs unless the user says otherwise).
      source: path it came from; fingerprint: hash of config + weights identity.
    """

    name: str
    family: str
    config: Any
    module: Any
    params: Any
    tokenizer: Any
    is_causal: bool
    default_pooling: str = "mean"
    source: str = ""
    fingerprint: str = ""

    def __call__(self, input_ids, attention_mask, **kw) -> ModelOutput:
        return self.module.apply({"params": self.params}, input_ids, attention_mask, **kw)
