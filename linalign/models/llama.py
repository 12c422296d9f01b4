"""Llama-family causal LMs in Flax Linen: Llama 2/3, Mistral, SmolLM2, Qwen2/2.5, Qwen3.

One module with config flags covers the family: ``attention_bias`` (Qwen2 q/k/v biases),
``qk_norm`` (Qwen3's per-head RMSNorm on queries and keys before RoPE), ``mlp_bias``, sliding
windows per layer (Mistral v0.1, Qwen with ``use_sliding_window``), tied or untied LM head and the
RoPE scalings of ``linalign.models.rope``.

The shared decoder (calling convention, KV cache, attention, LM head) is
``linalign.models.decoder``; this module holds what is Llama's: the config, the block layout
(pre-norm attention and SiLU-gated MLP) and the conversion table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from linalign.models import decoder
from linalign.models import rope as rope_lib
from linalign.models.base import UnsupportedConfigError, check_hf_config, config_float, config_int
# The cache is part of every causal family's surface (``family.KVCache``, ``family.new_cache``).
from linalign.models.decoder import KVCache, init_cache, new_cache  # noqa: F401

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
IS_CAUSAL = True


# --------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class Config:
    """Llama-family hyper-parameters (Hugging Face names where they exist)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: rope_lib.RopeSpec
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    o_proj_bias: bool = False  # Llama/Qwen3 follow attention_bias; Qwen2 never has one
    qk_norm: bool = False
    sliding_windows: tuple = ()  # per layer: window length or None
    bos_token_id: Any = None
    eos_token_id: Any = None

    @classmethod
    def from_hf_config(cls, hf: dict) -> "Config":
        """Builds a Config from a config.json dict, refusing attributes it does not implement.

        Raises:
          UnsupportedConfigError: unknown attribute, model_type, activation or rope type, or a
            missing or ill-typed field (a string size, zero heads...), named.
        """
        mt = hf.get("model_type")
        if mt not in MODEL_TYPES:
            raise UnsupportedConfigError(f"llama port serves {MODEL_TYPES}, not model_type={mt!r}")
        handled = {
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta", "attention_bias",
            "mlp_bias", "attention_dropout", "pretraining_tp", "sliding_window", "use_sliding_window",
            "max_window_layers", "layer_types",
        }
        check_hf_config(hf, handled, f"llama ({mt})")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedConfigError(f"llama port: hidden_act={hf['hidden_act']!r} (only 'silu')")
        if (hf.get("pretraining_tp") or 1) != 1:
            raise UnsupportedConfigError("llama port: pretraining_tp != 1 is not implemented")
        fam = f"llama ({mt})"
        n_layers = config_int(hf, "num_hidden_layers", fam)
        n_heads = config_int(hf, "num_attention_heads", fam)
        n_kv = config_int(hf, "num_key_value_heads", fam, n_heads)
        if n_heads % n_kv:
            raise UnsupportedConfigError(f"num_attention_heads={n_heads} not a multiple of kv heads {n_kv}")
        hidden = config_int(hf, "hidden_size", fam)
        head_dim = config_int(hf, "head_dim", fam, 0, minimum=0) or hidden // n_heads
        if head_dim < 1:
            raise UnsupportedConfigError(f"{fam}: hidden_size {hidden} gives no head_dim for {n_heads} heads")
        rope_dict = hf.get("rope_parameters") or hf.get("rope_scaling")
        default_theta = config_float(hf, "rope_theta", fam, 10000.0)
        if rope_dict and any(isinstance(v, dict) for v in rope_dict.values()):
            raise UnsupportedConfigError(f"llama port: per-layer-type rope_parameters {rope_dict}")
        spec = rope_lib.RopeSpec.from_hf(rope_dict, default_theta, f"llama ({mt})")
        window = None
        if mt not in ("qwen2", "qwen3") or hf.get("use_sliding_window", False):
            window = config_int(hf, "sliding_window", fam, None)
        layer_types = hf.get("layer_types")
        if layer_types is None:
            if mt in ("qwen2", "qwen3") and window is not None:
                first = config_int(hf, "max_window_layers", fam, 28, minimum=0)
                layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
            else:
                layer_types = ["sliding_attention" if window else "full_attention"] * n_layers
        if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
            raise UnsupportedConfigError(f"llama port: layer_types {layer_types} not understood")
        windows = tuple(window if (t == "sliding_attention" and window) else None for t in layer_types)
        return cls(
            model_type=mt, vocab_size=config_int(hf, "vocab_size", fam), hidden_size=hidden,
            intermediate_size=config_int(hf, "intermediate_size", fam), num_layers=n_layers, num_heads=n_heads,
            num_kv_heads=n_kv, head_dim=head_dim, rms_norm_eps=config_float(hf, "rms_norm_eps", fam, 1e-6),
            max_position_embeddings=config_int(hf, "max_position_embeddings", fam, 2048), rope=spec,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            mlp_bias=bool(hf.get("mlp_bias", False)), qk_norm=(mt == "qwen3"),
            o_proj_bias=bool(hf.get("attention_bias", False)) and mt != "qwen2",
            sliding_windows=windows, bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"))

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers


# --------------------------------------------------------------------------- model
class MLP(nn.Module):
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd):
        c = self.config
        return decoder.gated_mlp(x_btd, c.intermediate_size, c.hidden_size, nn.silu, c.mlp_bias, self.dtype)


class Block(nn.Module):
    config: Config
    window: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        c = self.config
        h = decoder.RMSNorm(c.rms_norm_eps, name="input_layernorm")(x_btd)
        attn = decoder.Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, 1.0 / math.sqrt(c.head_dim),
                                 qkv_bias=c.attention_bias, o_bias=c.o_proj_bias,
                                 qk_norm="plain" if c.qk_norm else None, eps=c.rms_norm_eps, dtype=self.dtype,
                                 name="self_attn")
        a, new_kv = attn(h, cos_sin, mask_bts, kv_cache, index)
        x_btd = x_btd + a
        h = decoder.RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x_btd)
        return x_btd + MLP(c, self.dtype, name="mlp")(h), new_kv


class Model(decoder.DecoderLM):
    """Llama-family decoder; calling convention in ``linalign.models.decoder``."""

    config: Config

    def block(self, i: int) -> Block:
        c = self.config
        return Block(c, c.sliding_windows[i] if c.sliding_windows else None, self.dtype)

    def rope_tables(self) -> dict:
        c = self.config
        return {"global": rope_lib.inv_freq_and_scale(c.rope, c.head_dim, c.max_position_embeddings)}


# --------------------------------------------------------------------------- conversion
def conversion_table(config: Config) -> list:
    """``convert.Rule`` rows for every tensor of a Hugging Face Llama-family checkpoint."""
    c = config
    rules = decoder.top_rules(c)
    for i in range(c.num_layers):
        rules += decoder.norm_rules(c, i, ("input_layernorm", "post_attention_layernorm"))
        rules += decoder.attention_rules(c, i, c.attention_bias, c.o_proj_bias, c.qk_norm)
        rules += decoder.mlp_rules(c, i, (f"layers_{i}", "mlp"), c.mlp_bias)
    return rules


def convert_params(tensors: dict, config: Config, dtype=jnp.float32) -> dict:
    """HF state dict (name -> np.ndarray) -> params pytree for ``Model``.

    A tied checkpoint that still carries ``lm_head.weight`` must carry the embedding there.
    """
    return decoder.convert_causal(tensors, config, conversion_table(config), dtype, "llama")
