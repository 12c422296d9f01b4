"""Gemma 3 text decoder (``gemma3_text``, e.g. Gemma-3-270M) in Flax Linen.

Same calling convention, cache and ``lm_head`` method as every causal port (read
``linalign.models.decoder``); what differs, all as transformers' ``Gemma3ForCausalLM`` does it:

* sliding-window and global layers (``layer_types``, or the legacy every-6th-layer-global pattern),
  with separate RoPE bases: ``rope_local_base_freq`` (default 10,000) for sliding layers and
  ``rope_theta`` (default 1,000,000, optionally scaled) for global ones;
* RMSNorm multiplying by ``1 + w`` in float32 before casting back, applied before and after both the
  attention and the MLP, and per head to queries and keys;
* embeddings scaled by sqrt(hidden_size) rounded to the embedding dtype (so bf16 weights see 25.25
  for hidden 640, as in transformers);
* attention scaled by ``query_pre_attn_scalar ** -0.5``; optional tanh soft-capping of the final
  logits; gelu (tanh approximation) gated MLP.
* ``attn_logit_softcapping``: Gemma 3 checkpoints set it to null, and transformers' Gemma 3
  attention never applies it even when set (it was a Gemma 2 feature). The port follows
  transformers so both give the same numbers, and warns when a config sets it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from linalign.models import decoder
from linalign.models import rope as rope_lib
from linalign.models.base import UnsupportedConfigError, check_hf_config, config_float, config_int
from linalign.models.decoder import KVCache, init_cache, new_cache  # noqa: F401

MODEL_TYPES = ("gemma3_text",)
IS_CAUSAL = True


@dataclasses.dataclass(frozen=True)
class Config:
    """Gemma 3 text hyper-parameters."""

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
    rope_global: rope_lib.RopeSpec
    rope_local: rope_lib.RopeSpec
    query_pre_attn_scalar: float
    sliding_windows: tuple  # per layer: window or None (global)
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    final_logit_softcapping: Optional[float] = None
    attn_logit_softcapping: Optional[float] = None
    bos_token_id: Any = None
    eos_token_id: Any = None

    @classmethod
    def from_hf_config(cls, hf: dict) -> "Config":
        """Builds a Config from a ``gemma3_text`` config dict, refusing what it does not implement."""
        if hf.get("model_type") not in MODEL_TYPES:
            raise UnsupportedConfigError(f"gemma3 port serves {MODEL_TYPES}, not model_type={hf.get('model_type')!r}")
        handled = {
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_activation", "hidden_act", "max_position_embeddings",
            "rms_norm_eps", "tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta",
            "rope_local_base_freq", "attention_bias", "attention_dropout", "query_pre_attn_scalar",
            "sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
            "use_bidirectional_attention", "_sliding_window_pattern", "sliding_window_pattern",
        }
        check_hf_config(hf, handled, "gemma3")
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act != "gelu_pytorch_tanh":
            raise UnsupportedConfigError(f"gemma3 port: hidden_activation={act!r} (only gelu_pytorch_tanh)")
        if hf.get("use_bidirectional_attention"):
            raise UnsupportedConfigError("gemma3 port: use_bidirectional_attention=True is not implemented")
        if hf.get("attn_logit_softcapping") is not None:
            warnings.warn("gemma3: attn_logit_softcapping is set; like transformers' Gemma 3 the port does "
                          "not apply it", stacklevel=2)
        fam = "gemma3"
        n_layers = config_int(hf, "num_hidden_layers", fam)
        pattern_key = "sliding_window_pattern" if "sliding_window_pattern" in hf else "_sliding_window_pattern"
        pattern = config_int(hf, pattern_key, fam, 0, minimum=0) or 6
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
        if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
            raise UnsupportedConfigError(f"gemma3 port: layer_types {layer_types} not understood")
        rp = hf.get("rope_parameters")
        if rp and "full_attention" in rp:
            full, local = rp.get("full_attention"), rp.get("sliding_attention")
        else:  # legacy: rope_theta + rope_scaling for global layers, rope_local_base_freq for sliding
            full, local = (rp or hf.get("rope_scaling")), {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
        # An explicit null window makes every layer global; an absent one is transformers' 4096.
        window = config_int(hf, "sliding_window", fam, None if "sliding_window" in hf else 4096)
        n_heads = config_int(hf, "num_attention_heads", fam)
        n_kv = config_int(hf, "num_key_value_heads", fam, n_heads)
        if n_heads % n_kv:
            raise UnsupportedConfigError(f"gemma3: num_attention_heads={n_heads} not a multiple of kv heads {n_kv}")
        return cls(
            model_type="gemma3_text", vocab_size=config_int(hf, "vocab_size", fam),
            hidden_size=config_int(hf, "hidden_size", fam),
            intermediate_size=config_int(hf, "intermediate_size", fam), num_layers=n_layers, num_heads=n_heads,
            num_kv_heads=n_kv, head_dim=config_int(hf, "head_dim", fam, 256),
            rms_norm_eps=config_float(hf, "rms_norm_eps", fam, 1e-6),
            max_position_embeddings=config_int(hf, "max_position_embeddings", fam, 131072),
            rope_global=rope_lib.RopeSpec.from_hf(full, config_float(hf, "rope_theta", fam, 1_000_000.0), "gemma3"),
            rope_local=rope_lib.RopeSpec.from_hf(local, 10_000.0, "gemma3 (sliding layers)"),
            query_pre_attn_scalar=config_float(hf, "query_pre_attn_scalar", fam, 256.0),
            sliding_windows=tuple(window if t == "sliding_attention" and window else None for t in layer_types),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            attention_bias=bool(hf.get("attention_bias", False)),
            final_logit_softcapping=config_float(hf, "final_logit_softcapping", fam, None),
            attn_logit_softcapping=hf.get("attn_logit_softcapping"),
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers


def _norm(eps, name=None):
    return decoder.RMSNorm(eps, plus_one=True, name=name)


class Block(nn.Module):
    """Attention and gelu-gated MLP, each with a norm before and after (Gemma's sandwich)."""

    config: Config
    window: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        c = self.config
        h = _norm(c.rms_norm_eps, "input_layernorm")(x_btd)
        attn = decoder.Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                                 c.query_pre_attn_scalar ** -0.5, qkv_bias=c.attention_bias,
                                 o_bias=c.attention_bias, qk_norm="plus_one", eps=c.rms_norm_eps,
                                 dtype=self.dtype, name="self_attn")
        a, new_kv = attn(h, cos_sin, mask_bts, kv_cache, index)
        x_btd = x_btd + _norm(c.rms_norm_eps, "post_attention_layernorm")(a)
        h = _norm(c.rms_norm_eps, "pre_feedforward_layernorm")(x_btd)
        h = decoder.gated_mlp(h, c.intermediate_size, c.hidden_size, lambda g: jax.nn.gelu(g, approximate=True),
                              dtype=self.dtype)
        return x_btd + _norm(c.rms_norm_eps, "post_feedforward_layernorm")(h), new_kv


class Model(decoder.DecoderLM):
    """Gemma 3 text decoder; calling convention in ``linalign.models.decoder``."""

    config: Config
    norm_plus_one = True

    def block(self, i: int) -> Block:
        return Block(self.config, self.config.sliding_windows[i], self.dtype)

    def rope_tables(self) -> dict:
        c = self.config
        return {"global": rope_lib.inv_freq_and_scale(c.rope_global, c.head_dim, c.max_position_embeddings),
                "local": rope_lib.inv_freq_and_scale(c.rope_local, c.head_dim, c.max_position_embeddings)}

    def rope_key(self, i: int) -> str:
        return "local" if self.config.sliding_windows[i] is not None else "global"

    def embed(self, input_ids):
        # The sqrt(hidden) scale is rounded to the embedding dtype first, as in transformers.
        emb_vd = self.embed_tokens.embedding
        x_btd = jnp.take(emb_vd, input_ids, axis=0) * jnp.asarray(np.sqrt(self.config.hidden_size), emb_vd.dtype)
        return x_btd.astype(self.dtype)

    def cap_logits(self, logits):
        cap = self.config.final_logit_softcapping
        return logits if cap is None else jnp.tanh(logits / cap) * cap


def conversion_table(config: Config) -> list:
    """``convert.Rule`` rows for a Hugging Face ``Gemma3ForCausalLM`` (norm weights stay as stored:
    w, used as 1 + w)."""
    c = config
    rules = decoder.top_rules(c)
    for i in range(c.num_layers):
        rules += decoder.norm_rules(c, i, ("input_layernorm", "post_attention_layernorm",
                                           "pre_feedforward_layernorm", "post_feedforward_layernorm"))
        rules += decoder.attention_rules(c, i, c.attention_bias, c.attention_bias, qk_norm=True)
        rules += decoder.mlp_rules(c, i, (f"layers_{i}",))
    return rules


def convert_params(tensors: dict, config: Config, dtype=jnp.float32) -> dict:
    """HF ``Gemma3ForCausalLM`` state dict -> params pytree for ``Model``."""
    return decoder.convert_causal(tensors, config, conversion_table(config), dtype, "gemma3")
