"""Llama-family causal LMs in Flax Linen: Llama 2/3, Mistral, SmolLM2, Qwen2/2.5, Qwen3.

One module with config flags covers the family: ``attention_bias`` (Qwen2 q/k/v biases),
``qk_norm`` (Qwen3's per-head RMSNorm on queries and keys before RoPE), ``mlp_bias``, sliding
windows per layer (Mistral v0.1, Qwen with ``use_sliding_window``), tied or untied LM head and the
RoPE scalings of ``linalign.models.rope``.

Calling convention (``Model(config, dtype=jnp.float32)``)::

    out = model.apply({"params": p}, input_ids_bt, attention_mask_bt)            # ModelOutput
    out, cache = model.apply({"params": p}, ids_bt, mask_bt, cache=cache)        # KV-cached
    h_btd = model.apply({"params": p}, ids, mask, return_logits=False).last_hidden_state
    logits_btv = model.apply({"params": p}, h_btd, method=Model.lm_head)         # any h

* ``attention_mask`` marks real tokens (1) and padding (0), left or right.
* ``positions`` default to the number of real tokens before each token (``cumsum(mask) - 1``,
  continued from the cache), so a left-padded row gets the same positions, and hence the same
  states, as the unpadded text. This is what ``transformers.generate`` does; a bare transformers
  forward call instead uses ``arange`` unless given ``position_ids``.
* The cache (``KVCache``, make one with ``init_cache``) is preallocated to a fixed length so
  decoding compiles once: new keys/values are written at slot ``cache.index`` with
  ``lax.dynamic_update_slice`` and every query attends over all slots, masked by which slots hold
  real tokens, causality in slot order and the layer's sliding window (also in slot order, as in
  transformers' masks).
* ``dtype`` is the activation dtype; params may be float32 or bfloat16 and are cast at use.
  Softmax, RMSNorm statistics and RoPE are always computed in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from linalign.models import rope as rope_lib
from linalign.models.base import CheckpointError, ModelOutput, UnsupportedConfigError, check_hf_config

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
          UnsupportedConfigError: unknown attribute, model_type, activation or rope type.
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
        n_layers = int(hf["num_hidden_layers"])
        n_heads = int(hf["num_attention_heads"])
        n_kv = int(hf.get("num_key_value_heads") or n_heads)
        if n_heads % n_kv:
            raise UnsupportedConfigError(f"num_attention_heads={n_heads} not a multiple of kv heads {n_kv}")
        head_dim = int(hf.get("head_dim") or hf["hidden_size"] // n_heads)
        rope_dict = hf.get("rope_parameters") or hf.get("rope_scaling")
        default_theta = float(hf.get("rope_theta", 10000.0))
        if rope_dict and any(isinstance(v, dict) for v in rope_dict.values()):
            raise UnsupportedConfigError(f"llama port: per-layer-type rope_parameters {rope_dict}")
        spec = rope_lib.RopeSpec.from_hf(rope_dict, default_theta, f"llama ({mt})")
        window = hf.get("sliding_window")
        if mt in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
            window = None
        layer_types = hf.get("layer_types")
        if layer_types is None:
            if mt in ("qwen2", "qwen3") and window is not None:
                first = int(hf.get("max_window_layers", 28))
                layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
            else:
                layer_types = ["sliding_attention" if window else "full_attention"] * n_layers
        if len(layer_types) != n_layers or set(layer_types) - {"full_attention", "sliding_attention"}:
            raise UnsupportedConfigError(f"llama port: layer_types {layer_types} not understood")
        windows = tuple(int(window) if (t == "sliding_attention" and window) else None for t in layer_types)
        return cls(
            model_type=mt, vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]), num_layers=n_layers, num_heads=n_heads,
            num_kv_heads=n_kv, head_dim=head_dim, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)), rope=spec,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            mlp_bias=bool(hf.get("mlp_bias", False)), qk_norm=(mt == "qwen3"),
            o_proj_bias=bool(hf.get("attention_bias", False)) and mt != "qwen2",
            sliding_windows=windows, bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"))

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers


# --------------------------------------------------------------------------- cache
@flax.struct.dataclass
class KVCache:
    """Preallocated per-layer keys and values.

    Attributes:
      k: tuple (one per layer) of [batch, kv_heads, head_dim, max_len] keys, stored transposed.
      v: tuple (one per layer) of [batch, kv_heads, max_len, head_dim] values.
      valid_bs: [batch, max_len] bool, slot holds a real (non-padding) token.
      index: int32 scalar, next slot to write.
      seen_b: [batch] int32, real tokens written so far per row (the next position id).
    """

    k: tuple
    v: tuple
    valid_bs: jax.Array
    index: jax.Array
    seen_b: jax.Array

    @property
    def max_len(self) -> int:
        return self.valid_bs.shape[1]

    def rollback(self, index) -> "KVCache":
        """Forgets every slot from ``index`` on (stale keys stay but are masked out)."""
        keep_bs = jnp.arange(self.max_len)[None, :] < index
        valid = self.valid_bs & keep_bs
        return self.replace(valid_bs=valid, index=jnp.asarray(index, jnp.int32),
                            seen_b=valid.sum(1).astype(jnp.int32))


def init_cache(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
               dtype=jnp.float32) -> KVCache:
    """An empty cache of fixed length ``max_len`` (layouts as in ``KVCache``)."""
    zk = jnp.zeros((batch, num_kv_heads, head_dim, max_len), dtype)
    zv = jnp.zeros((batch, num_kv_heads, max_len, head_dim), dtype)
    return KVCache(k=tuple(zk for _ in range(num_layers)), v=tuple(zv for _ in range(num_layers)),
                   valid_bs=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
                   seen_b=jnp.zeros((batch,), jnp.int32))


# --------------------------------------------------------------------------- shared pieces
def rms_norm(x, w, eps: float, plus_one: bool = False):
    """RMSNorm with float32 statistics.

    Llama multiplies the weight after casting back (``w * x.to(dtype)``); Gemma multiplies by
    ``1 + w`` in float32 and then casts. Both are reproduced to match transformers in bf16.
    """
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if plus_one:
        return (xf * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(x.dtype) * xf.astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float
    plus_one: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        w = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        return rms_norm(x, w, self.eps, self.plus_one)


def positions_from_mask(mask_bt, seen_b=None):
    """Position ids counting real tokens only: [B, T] int32 (padding gets a harmless 0+)."""
    pos = jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1
    if seen_b is not None:
        pos = pos + seen_b[:, None]
    return jnp.maximum(pos, 0)


def attention_mask(valid_bs, q_slot_t, window: Optional[int]):
    """[B, T, S] bool: key slot is real, not in the future, and inside the sliding window."""
    k_slot_s = jnp.arange(valid_bs.shape[1])
    ok_ts = k_slot_s[None, :] <= q_slot_t[:, None]
    if window is not None:
        ok_ts &= k_slot_s[None, :] > q_slot_t[:, None] - window
    return valid_bs[:, None, :] & ok_ts[None]


def kv_layout(k_btkh, v_btkh):
    """New keys/values [B, T, K, H] -> the cache layouts: keys [B, K, H, T], values [B, K, T, H].

    These are the operand layouts of the two attention products (batch over B and K), so XLA
    reads the cache in place; with [B, S, K, H] it transposed both caches of every layer at
    every decoding step.
    """
    return k_btkh.transpose(0, 2, 3, 1), v_btkh.transpose(0, 2, 1, 3)


def attend(q_btnh, k_bkhs, v_bksh, mask_bts, scale: float, softcap: Optional[float] = None):
    """Grouped-query attention with float32 scores.

    Args:
      q_btnh: [B, T, N, H] queries.
      k_bkhs: [B, K, H, S] keys and v_bksh: [B, K, S, H] values (``kv_layout``), N = K * G.
      mask_bts: [B, T, S] bool.
      scale: multiplies the scores (1/sqrt(H) for Llama; query_pre_attn_scalar^-0.5 for Gemma).
      softcap: tanh soft-capping of scores, if set.

    Returns:
      [B, T, N, H] in the query dtype.
    """
    b, t, n, h = q_btnh.shape
    kv = k_bkhs.shape[1]
    q_bkgth = q_btnh.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
    s_bkgts = jnp.einsum("bkgth,bkhs->bkgts", q_bkgth, k_bkhs,
                         preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        s_bkgts = jnp.tanh(s_bkgts / softcap) * softcap
    # A fully masked row (a padding query) gets uniform weights instead of NaN; it is never used.
    s_bkgts = jnp.where(mask_bts[:, None, None], s_bkgts, jnp.finfo(jnp.float32).min)
    p_bkgts = jax.nn.softmax(s_bkgts, axis=-1).astype(v_bksh.dtype)
    o_bkgth = jnp.einsum("bkgts,bksh->bkgth", p_bkgts, v_bksh)
    return o_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def write_cache(k_cache, v_cache, k_new, v_new, index):
    """Writes new keys [B, K, H, T] and values [B, K, T, H] at slot ``index`` of the caches."""
    k = jax.lax.dynamic_update_slice(k_cache, k_new.astype(k_cache.dtype), (0, 0, 0, index))
    v = jax.lax.dynamic_update_slice(v_cache, v_new.astype(v_cache.dtype), (0, 0, index, 0))
    return k, v


# --------------------------------------------------------------------------- modules
class Dense(nn.Module):
    """A projection whose kernel is stored 2-D, ``[prod(in), prod(features)]``, with bias
    ``[prod(features)]``, computed as one ``[rows, in] x [in, out]`` product; inputs and outputs
    keep their head axes (``n_in`` trailing input axes are contracted).

    Why not ``nn.DenseGeneral`` with a ``[D, N, H]`` kernel: XLA:CPU fuses the producer of the
    matrix operand of a matrix-vector product into the product when the vector is small, and the
    reshape of a 3-D kernel to 2-D is such a producer, so every batch-1 decoding projection became
    a naive loop reading weights at ~4 GB/s instead of the library kernel's ~30 GB/s (SmolLM2-135M:
    70 ms per token instead of 30). A 2-D parameter reaches the product untouched. On accelerators
    it is the same matmul.
    """

    features: Any
    n_in: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        k_in, k_out = math.prod(x.shape[-self.n_in:]), math.prod(feats)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k_in, k_out), self.param_dtype)
        lead = x.shape[:-self.n_in]
        y = jnp.dot(x.reshape((-1, k_in)).astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (k_out,), self.param_dtype).astype(self.dtype)
        return y.reshape(lead + feats)


def _dense(features, axis=-1, bias=False, dtype=jnp.float32, name=None):
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if axes != tuple(range(-len(axes), 0)):
        raise ValueError(f"Dense contracts trailing axes only, got axis={axis}")
    return Dense(features=features, n_in=len(axes), use_bias=bias, dtype=dtype, name=name)


class Attention(nn.Module):
    config: Config
    window: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        c = self.config
        q = _dense((c.num_heads, c.head_dim), bias=c.attention_bias, dtype=self.dtype, name="q_proj")(x_btd)
        k = _dense((c.num_kv_heads, c.head_dim), bias=c.attention_bias, dtype=self.dtype, name="k_proj")(x_btd)
        v = _dense((c.num_kv_heads, c.head_dim), bias=c.attention_bias, dtype=self.dtype, name="v_proj")(x_btd)
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, name="q_norm")(q)
            k = RMSNorm(c.rms_norm_eps, name="k_norm")(k)
        cos_bth, sin_bth = cos_sin
        q, k = rope_lib.apply_rope(q, cos_bth, sin_bth), rope_lib.apply_rope(k, cos_bth, sin_bth)
        k, v = kv_layout(k, v)
        if kv_cache is not None:
            k, v = write_cache(kv_cache[0], kv_cache[1], k, v, index)
            new_cache = (k, v)
        else:
            new_cache = None
        o_btnh = attend(q, k.astype(self.dtype), v.astype(self.dtype), mask_bts, 1.0 / math.sqrt(c.head_dim))
        out = _dense(c.hidden_size, axis=(-2, -1), bias=c.o_proj_bias, dtype=self.dtype, name="o_proj")(o_btnh)
        return out, new_cache


class MLP(nn.Module):
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd):
        c = self.config
        gate = _dense(c.intermediate_size, bias=c.mlp_bias, dtype=self.dtype, name="gate_proj")(x_btd)
        up = _dense(c.intermediate_size, bias=c.mlp_bias, dtype=self.dtype, name="up_proj")(x_btd)
        return _dense(c.hidden_size, bias=c.mlp_bias, dtype=self.dtype, name="down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    config: Config
    window: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        c = self.config
        h = RMSNorm(c.rms_norm_eps, name="input_layernorm")(x_btd)
        a, new_cache = Attention(c, self.window, self.dtype, name="self_attn")(h, cos_sin, mask_bts, kv_cache, index)
        x_btd = x_btd + a
        h = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x_btd)
        return x_btd + MLP(c, self.dtype, name="mlp")(h), new_cache


class Model(nn.Module):
    """Llama-family decoder; see the module docstring for the calling convention."""

    config: Config
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32)
        self.layers = [Block(c, c.sliding_windows[i] if c.sliding_windows else None, self.dtype)
                       for i in range(c.num_layers)]
        self.norm = RMSNorm(c.rms_norm_eps)
        if not c.tie_word_embeddings:
            self.lm_head_proj = _dense(c.vocab_size, dtype=self.dtype)
        self.inv_freq, self.rope_scale = rope_lib.inv_freq_and_scale(
            c.rope, c.head_dim, c.max_position_embeddings)

    def __call__(self, input_ids, attention_mask=None, positions=None, cache: Optional[KVCache] = None,
                 output_hidden_states: bool = False, return_logits: bool = True):
        """Runs the decoder.

        Args:
          input_ids: [B, T] int token ids.
          attention_mask: [B, T] 1 real / 0 padding (default all ones).
          positions: [B, T] position ids (default: counting real tokens, see module docstring).
          cache: a ``KVCache``; the T new tokens are written at ``cache.index``.
          output_hidden_states: also return the embeddings and every layer's output.
          return_logits: apply the LM head to every position.

        Returns:
          ``ModelOutput`` without a cache; ``(ModelOutput, KVCache)`` with one.
        """
        x_btd = self.embed_tokens(input_ids)
        return run_decoder(self, x_btd, input_ids, attention_mask, positions, cache,
                           output_hidden_states, return_logits,
                           lambda i, pos: rope_lib.cos_sin(pos, self.inv_freq, self.rope_scale))

    def lm_head(self, h_btd):
        """Logits [..., vocab] for final-norm hidden states [..., hidden] (any source)."""
        h_btd = h_btd.astype(self.dtype)
        if self.config.tie_word_embeddings:
            return tied_lm_head(self.embed_tokens.embedding, h_btd, self.dtype)
        return self.lm_head_proj(h_btd)


def tied_lm_head(embedding_vd, h_d, dtype):
    """Logits ``h @ E.T`` for a tied head, as ``(E @ h.T).T``.

    Written this way the [V, D] table is read in its stored row-major layout; XLA:CPU lowers
    ``h @ E.T`` (``nn.Embed.attend``) to a physical transpose of the whole table first, a 113 MB
    copy per decoding step for SmolLM2-135M.
    """
    lead = h_d.shape[:-1]
    h_nd = h_d.reshape((-1, h_d.shape[-1])).astype(dtype)
    logits_vn = jnp.dot(embedding_vd.astype(dtype), h_nd.T)
    return logits_vn.T.reshape(lead + (embedding_vd.shape[0],))


def run_decoder(model, x_btd, input_ids, attention_mask, positions, cache, output_hidden_states,
                return_logits, cos_sin_fn: Callable, final_norm=None):
    """Shared decoder loop for Llama- and Gemma-style models (blocks, final norm, head)."""
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    real_bt = attention_mask.astype(bool)
    if cache is None:
        index, valid_bs, seen_b = 0, real_bt, None
    else:
        index, seen_b = cache.index, cache.seen_b
        valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, real_bt, (0, index))
    if positions is None:
        positions = positions_from_mask(attention_mask, seen_b)
    q_slot_t = index + jnp.arange(t)
    masks = {}
    cos_sins = {}
    hidden = [x_btd] if output_hidden_states else None
    new_k, new_v = [], []
    for i, layer in enumerate(model.layers):
        w = layer.window
        if w not in masks:
            masks[w] = attention_mask_fn(valid_bs, q_slot_t, w)
        key = _rope_key(model, i)
        if key not in cos_sins:
            cos_sins[key] = cos_sin_fn(i, positions)
        kv = None if cache is None else (cache.k[i], cache.v[i])
        x_btd, kv_new = layer(x_btd, cos_sins[key], masks[w], kv, index)
        if cache is not None:
            new_k.append(kv_new[0])
            new_v.append(kv_new[1])
        if output_hidden_states:
            hidden.append(x_btd)
    h_btd = model.norm(x_btd)
    if output_hidden_states:
        hidden[-1] = h_btd  # transformers' convention: the last entry is after the final norm
    logits = model.lm_head(h_btd) if return_logits else None
    out = ModelOutput(last_hidden_state=h_btd, hidden_states=tuple(hidden) if hidden else None, logits=logits)
    if cache is None:
        return out
    new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid_bs=valid_bs, index=index + t,
                        seen_b=cache.seen_b + attention_mask.astype(jnp.int32).sum(1))
    return out, new_cache


attention_mask_fn = attention_mask


def _rope_key(model, i):
    fn = getattr(model, "rope_key", None)
    return fn(i) if fn is not None else 0


def new_cache(config: Config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty ``KVCache`` for this config."""
    return init_cache(config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim, dtype)


# --------------------------------------------------------------------------- conversion
def _t(w, c):
    """HF Linear weight [out, in] -> 2-D kernel [in, out] (see ``Dense``)."""
    return w.T


def _ident(w, c):
    return w


def conversion_table(config: Config) -> list:
    """(hf_name, hf_shape, param_path, transform) for every tensor, Llama layout."""
    c = config
    d, n, k, h, f, v = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size
    rows = [("model.embed_tokens.weight", (v, d), ("embed_tokens", "embedding"), _ident),
            ("model.norm.weight", (d,), ("norm", "scale"), _ident)]
    if not c.tie_word_embeddings:
        rows.append(("lm_head.weight", (v, d), ("lm_head_proj", "kernel"), _t))
    for i in range(c.num_layers):
        p, L = f"model.layers.{i}.", f"layers_{i}"
        rows += [
            (p + "input_layernorm.weight", (d,), (L, "input_layernorm", "scale"), _ident),
            (p + "post_attention_layernorm.weight", (d,), (L, "post_attention_layernorm", "scale"), _ident),
            (p + "self_attn.q_proj.weight", (n * h, d), (L, "self_attn", "q_proj", "kernel"), _t),
            (p + "self_attn.k_proj.weight", (k * h, d), (L, "self_attn", "k_proj", "kernel"), _t),
            (p + "self_attn.v_proj.weight", (k * h, d), (L, "self_attn", "v_proj", "kernel"), _t),
            (p + "self_attn.o_proj.weight", (d, n * h), (L, "self_attn", "o_proj", "kernel"), _t),
            (p + "mlp.gate_proj.weight", (f, d), (L, "mlp", "gate_proj", "kernel"), _t),
            (p + "mlp.up_proj.weight", (f, d), (L, "mlp", "up_proj", "kernel"), _t),
            (p + "mlp.down_proj.weight", (d, f), (L, "mlp", "down_proj", "kernel"), _t),
        ]
        if c.attention_bias:
            for nm, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
                rows.append((p + f"self_attn.{nm}.bias", (heads * h,), (L, "self_attn", nm, "bias"), _ident))
        if c.o_proj_bias:
            rows.append((p + "self_attn.o_proj.bias", (d,), (L, "self_attn", "o_proj", "bias"), _ident))
        if c.mlp_bias:
            for nm, size in (("gate_proj", f), ("up_proj", f), ("down_proj", d)):
                rows.append((p + f"mlp.{nm}.bias", (size,), (L, "mlp", nm, "bias"), _ident))
        if c.qk_norm:
            rows += [(p + "self_attn.q_norm.weight", (h,), (L, "self_attn", "q_norm", "scale"), _ident),
                     (p + "self_attn.k_norm.weight", (h,), (L, "self_attn", "k_norm", "scale"), _ident)]
    return rows


def apply_table(tensors: dict, config, rows: Sequence, dtype, family: str,
                ignorable: Callable[[str], bool] = lambda name: False) -> dict:
    """Runs a conversion table: every row's tensor must exist with its shape; leftovers are errors.

    Args:
      tensors: HF-named numpy arrays (a ``model.`` prefix may be missing).
      rows: (hf_name, hf_shape, param_path, transform).
      dtype: params dtype (float32 or bfloat16).

    Raises:
      CheckpointError: missing tensors, wrong shapes, or tensors the table does not account for.
    """
    names = dict(tensors)
    if not any(n.startswith("model.") for n in names):
        names = {("model." + n if not n.startswith("lm_head.") else n): w for n, w in names.items()}
    params: dict = {}
    missing, used = [], set()
    for hf_name, shape, path, fn in rows:
        if hf_name not in names:
            missing.append(hf_name)
            continue
        w = np.asarray(names[hf_name])
        if tuple(w.shape) != tuple(shape):
            raise CheckpointError(f"{family}: tensor {hf_name} has shape {tuple(w.shape)}, expected {shape}")
        used.add(hf_name)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(fn(w, config), dtype=dtype)
    if missing:
        raise CheckpointError(f"{family}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
    extra = sorted(n for n in names if n not in used and not ignorable(n))
    if extra:
        raise CheckpointError(f"{family}: checkpoint has tensor(s) the port does not use: {extra[:8]}")
    return params


def convert_params(tensors: dict, config: Config, dtype=jnp.float32) -> dict:
    """HF state dict (name -> np.ndarray) -> params pytree for ``Model``.

    A tied checkpoint that still carries ``lm_head.weight`` must carry the embedding there.
    """
    def ignorable(name):
        if name.endswith("rotary_emb.inv_freq"):
            return True
        if name == "lm_head.weight" and config.tie_word_embeddings:
            emb = tensors.get("model.embed_tokens.weight", tensors.get("embed_tokens.weight"))
            if emb is not None and not np.array_equal(np.asarray(tensors[name]), np.asarray(emb)):
                raise CheckpointError("llama: tie_word_embeddings=True but lm_head.weight differs from embeddings")
            return True
        return False
    return apply_table(tensors, config, conversion_table(config), dtype, "llama", ignorable)
