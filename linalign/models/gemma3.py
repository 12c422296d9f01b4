"""Gemma 3 text decoder (``gemma3_text``, e.g. Gemma-3-270M) in Flax Linen.

Same calling convention, cache and ``lm_head`` method as ``linalign.models.llama`` (read its
docstring); what differs, all as transformers' ``Gemma3ForCausalLM`` does it:

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

from linalign.models import llama
from linalign.models import rope as rope_lib
from linalign.models.base import UnsupportedConfigError, check_hf_config

MODEL_TYPES = ("gemma3_text",)
IS_CAUSAL = True
KVCache = llama.KVCache


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
        n_layers = int(hf["num_hidden_layers"])
        pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)) or 6)
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
        if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
            raise UnsupportedConfigError(f"gemma3 port: layer_types {layer_types} not understood")
        rp = hf.get("rope_parameters")
        if rp and "full_attention" in rp:
            full, local = rp.get("full_attention"), rp.get("sliding_attention")
        else:  # legacy: rope_theta + rope_scaling for global layers, rope_local_base_freq for sliding
            full, local = (rp or hf.get("rope_scaling")), {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
        window = hf.get("sliding_window", 4096)
        n_heads = int(hf["num_attention_heads"])
        return cls(
            model_type="gemma3_text", vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]), num_layers=n_layers, num_heads=n_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or n_heads), head_dim=int(hf.get("head_dim", 256)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 131072)),
            rope_global=rope_lib.RopeSpec.from_hf(full, float(hf.get("rope_theta", 1_000_000.0)), "gemma3"),
            rope_local=rope_lib.RopeSpec.from_hf(local, 10_000.0, "gemma3 (sliding layers)"),
            query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
            sliding_windows=tuple(int(window) if t == "sliding_attention" and window else None for t in layer_types),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            attention_bias=bool(hf.get("attention_bias", False)),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
            attn_logit_softcapping=hf.get("attn_logit_softcapping"),
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers


def _norm(eps, name=None):
    return llama.RMSNorm(eps, plus_one=True, name=name)


class Attention(nn.Module):
    config: Config
    window: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        c = self.config
        dense = lambda f, name, axis=-1: llama._dense(f, axis=axis, bias=c.attention_bias, dtype=self.dtype, name=name)
        q = _norm(c.rms_norm_eps, "q_norm")(dense((c.num_heads, c.head_dim), "q_proj")(x_btd))
        k = _norm(c.rms_norm_eps, "k_norm")(dense((c.num_kv_heads, c.head_dim), "k_proj")(x_btd))
        v = dense((c.num_kv_heads, c.head_dim), "v_proj")(x_btd)
        q, k = rope_lib.apply_rope(q, *cos_sin), rope_lib.apply_rope(k, *cos_sin)
        k, v = llama.kv_layout(k, v)
        new_cache = None
        if kv_cache is not None:
            k, v = llama.write_cache(kv_cache[0], kv_cache[1], k, v, index)
            new_cache = (k, v)
        o = llama.attend(q, k.astype(self.dtype), v.astype(self.dtype), mask_bts,
                         c.query_pre_attn_scalar ** -0.5)
        return dense(c.hidden_size, "o_proj", axis=(-2, -1))(o), new_cache


class Block(nn.Module):
    config: Config
    window: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        c = self.config
        h = _norm(c.rms_norm_eps, "input_layernorm")(x_btd)
        a, new_cache = Attention(c, self.window, self.dtype, name="self_attn")(h, cos_sin, mask_bts, kv_cache, index)
        x_btd = x_btd + _norm(c.rms_norm_eps, "post_attention_layernorm")(a)
        h = _norm(c.rms_norm_eps, "pre_feedforward_layernorm")(x_btd)
        dense = lambda f, name: llama._dense(f, dtype=self.dtype, name=name)
        h = dense(c.hidden_size, "down_proj")(
            jax.nn.gelu(dense(c.intermediate_size, "gate_proj")(h), approximate=True)
            * dense(c.intermediate_size, "up_proj")(h))
        return x_btd + _norm(c.rms_norm_eps, "post_feedforward_layernorm")(h), new_cache


class Model(nn.Module):
    """Gemma 3 text decoder; calling convention of ``linalign.models.llama.Model``."""

    config: Config
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32)
        self.layers = [Block(c, c.sliding_windows[i], self.dtype) for i in range(c.num_layers)]
        self.norm = _norm(c.rms_norm_eps)
        if not c.tie_word_embeddings:
            self.lm_head_proj = llama._dense(c.vocab_size, dtype=self.dtype)
        self.rope_tables = {
            "global": rope_lib.inv_freq_and_scale(c.rope_global, c.head_dim, c.max_position_embeddings),
            "local": rope_lib.inv_freq_and_scale(c.rope_local, c.head_dim, c.max_position_embeddings)}

    def rope_key(self, i: int) -> str:
        return "local" if self.config.sliding_windows[i] is not None else "global"

    def __call__(self, input_ids, attention_mask=None, positions=None, cache: Optional[KVCache] = None,
                 output_hidden_states: bool = False, return_logits: bool = True):
        """See ``linalign.models.llama.Model.__call__``."""
        emb_vd = self.embed_tokens.embedding
        x_btd = jnp.take(emb_vd, input_ids, axis=0) * jnp.asarray(np.sqrt(self.config.hidden_size), emb_vd.dtype)
        x_btd = x_btd.astype(self.dtype)

        def cos_sin(i, pos):
            inv_freq, scale = self.rope_tables[self.rope_key(i)]
            return rope_lib.cos_sin(pos, inv_freq, scale)

        return llama.run_decoder(self, x_btd, input_ids, attention_mask, positions, cache,
                                 output_hidden_states, return_logits, cos_sin)

    def lm_head(self, h_btd):
        """Logits [..., vocab] (soft-capped if configured) for final-norm hidden states."""
        h_btd = h_btd.astype(self.dtype)
        if self.config.tie_word_embeddings:
            logits = llama.tied_lm_head(self.embed_tokens.embedding, h_btd, self.dtype)
        else:
            logits = self.lm_head_proj(h_btd)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        return logits


def new_cache(config: Config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty ``KVCache`` for this config."""
    return llama.init_cache(config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim, dtype)


def convert_params(tensors: dict, config: Config, dtype=jnp.float32) -> dict:
    """HF ``Gemma3ForCausalLM`` state dict -> params (Gemma norm weights stay as stored: w, used as 1 + w)."""
    c = config
    d, n, k, h, f, v = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size
    ident = llama._ident
    rows = [("model.embed_tokens.weight", (v, d), ("embed_tokens", "embedding"), ident),
            ("model.norm.weight", (d,), ("norm", "scale"), ident)]
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", (v, d), ("lm_head_proj", "kernel"), llama._t))
    for i in range(c.num_layers):
        p, L = f"model.layers.{i}.", f"layers_{i}"
        for nm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                   "post_feedforward_layernorm"):
            rows.append((p + nm + ".weight", (d,), (L, nm, "scale"), ident))
        rows += [
            (p + "self_attn.q_norm.weight", (h,), (L, "self_attn", "q_norm", "scale"), ident),
            (p + "self_attn.k_norm.weight", (h,), (L, "self_attn", "k_norm", "scale"), ident),
            (p + "self_attn.q_proj.weight", (n * h, d), (L, "self_attn", "q_proj", "kernel"), llama._t),
            (p + "self_attn.k_proj.weight", (k * h, d), (L, "self_attn", "k_proj", "kernel"), llama._t),
            (p + "self_attn.v_proj.weight", (k * h, d), (L, "self_attn", "v_proj", "kernel"), llama._t),
            (p + "self_attn.o_proj.weight", (d, n * h), (L, "self_attn", "o_proj", "kernel"), llama._t),
            (p + "mlp.gate_proj.weight", (f, d), (L, "gate_proj", "kernel"), llama._t),
            (p + "mlp.up_proj.weight", (f, d), (L, "up_proj", "kernel"), llama._t),
            (p + "mlp.down_proj.weight", (d, f), (L, "down_proj", "kernel"), llama._t),
        ]
        if c.attention_bias:
            for nm, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
                rows.append((p + f"self_attn.{nm}.bias", (heads * h,), (L, "self_attn", nm, "bias"), ident))
            rows.append((p + "self_attn.o_proj.bias", (d,), (L, "self_attn", "o_proj", "bias"), ident))
    return llama.apply_table(tensors, config, rows, dtype, "gemma3",
                             lambda name: name.endswith("inv_freq") or (name == "lm_head.weight" and c.tie_word_embeddings))
