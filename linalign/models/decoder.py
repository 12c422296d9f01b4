"""Shared pieces of the causal decoder ports (``llama``, ``gemma3``): cache, attention, norms,
projections, the decoder loop, the LM head and the conversion rows they have in common.

Calling convention of every causal port (``Model(config, dtype=jnp.float32)``)::

    out = model.apply({"params": p}, input_ids_bt, attention_mask_bt)            # ModelOutput
    out, cache = model.apply({"params": p}, ids_bt, mask_bt, cache=cache)        # KV-cached
    h_btd = model.apply({"params": p}, ids, mask, return_logits=False).last_hidden_state
    logits_btv = model.apply({"params": p}, h_btd, method=Model.lm_head)         # any h

* ``attention_mask`` marks real tokens (1) and padding (0), left or right.
* ``positions`` default to the number of real tokens before each token (``cumsum(mask) - 1``,
  continued from the cache), so a left-padded row gets the same positions, and hence the same
  states, as the unpadded text. This is what ``transformers.generate`` does; a bare transformers
  forward call instead uses ``arange`` unless given ``position_ids``.
* The cache (``KVCache``, make one with ``new_cache``) is preallocated to a fixed length so
  decoding compiles once: new keys/values are written at slot ``cache.index`` with
  ``lax.dynamic_update_slice`` and every query attends over all slots, masked by which slots hold
  real tokens, causality in slot order and the layer's sliding window (also in slot order, as in
  transformers' masks).
* ``dtype`` is the activation dtype; params may be float32 or bfloat16 and are cast at use.
  Softmax, RMSNorm statistics and RoPE are always computed in float32.

A family module supplies its ``Config`` (which must have the fields ``DecoderLM`` reads:
``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_layers``, ``num_heads``,
``num_kv_heads``, ``head_dim``, ``rms_norm_eps``, ``tie_word_embeddings``, ``sliding_windows``), its
``Block`` and a ``DecoderLM`` subclass that says how tokens are embedded and which RoPE table
each layer uses.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from linalign.models import convert
from linalign.models import rope as rope_lib
from linalign.models.base import CheckpointError, ModelOutput


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


def new_cache(config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty ``KVCache`` for a decoder config."""
    return init_cache(config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim, dtype)


# --------------------------------------------------------------------------- functions
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


def positions_from_mask(mask_bt, seen_b=None):
    """Position ids counting real tokens only: [B, T] int32 (padding gets a harmless 0+)."""
    pos = jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1
    if seen_b is not None:
        pos = pos + seen_b[:, None]
    return jnp.maximum(pos, 0)


def slot_mask(valid_bs, q_slot_t, window: Optional[int]):
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


# --------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    eps: float
    plus_one: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        w = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        return rms_norm(x, w, self.eps, self.plus_one)


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


def dense(features, axis=-1, bias=False, dtype=jnp.float32, name=None) -> Dense:
    """A ``Dense`` contracting the trailing ``axis`` (an int or a tuple of trailing axes)."""
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    if axes != tuple(range(-len(axes), 0)):
        raise ValueError(f"Dense contracts trailing axes only, got axis={axis}")
    return Dense(features=features, n_in=len(axes), use_bias=bias, dtype=dtype, name=name)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional per-head RMSNorm on q and k.

    Attributes:
      hidden_size / num_heads / num_kv_heads / head_dim: shapes.
      scale: multiplies the scores.
      qkv_bias / o_bias: projections with biases.
      qk_norm: "plain" (Qwen3), "plus_one" (Gemma 3) or None.
      eps: RMSNorm epsilon of the q/k norms.
    """

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: Optional[str] = None
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, cos_sin, mask_bts, kv_cache=None, index=None):
        """Args: x_btd [B, T, D]; cos_sin two [B, T, H/2]-style tables; mask_bts [B, T, S];
        kv_cache (k, v) of this layer or None; index the cache slot of the first new token.

        Returns: ([B, T, D], the updated (k, v) or None)."""
        heads = (self.num_heads, self.head_dim)
        kv_heads = (self.num_kv_heads, self.head_dim)
        q = dense(heads, bias=self.qkv_bias, dtype=self.dtype, name="q_proj")(x_btd)
        k = dense(kv_heads, bias=self.qkv_bias, dtype=self.dtype, name="k_proj")(x_btd)
        v = dense(kv_heads, bias=self.qkv_bias, dtype=self.dtype, name="v_proj")(x_btd)
        if self.qk_norm is not None:
            plus_one = self.qk_norm == "plus_one"
            q = RMSNorm(self.eps, plus_one=plus_one, name="q_norm")(q)
            k = RMSNorm(self.eps, plus_one=plus_one, name="k_norm")(k)
        q, k = rope_lib.apply_rope(q, *cos_sin), rope_lib.apply_rope(k, *cos_sin)
        k, v = kv_layout(k, v)
        new_kv = None
        if kv_cache is not None:
            k, v = write_cache(kv_cache[0], kv_cache[1], k, v, index)
            new_kv = (k, v)
        o_btnh = attend(q, k.astype(self.dtype), v.astype(self.dtype), mask_bts, self.scale)
        out = dense(self.hidden_size, axis=(-2, -1), bias=self.o_bias, dtype=self.dtype, name="o_proj")(o_btnh)
        return out, new_kv


def gated_mlp(x_btd, intermediate_size: int, hidden_size: int, act: Callable, bias: bool = False,
              dtype=jnp.float32):
    """``down(act(gate(x)) * up(x))``; the three projections are named ``gate_proj``, ``up_proj``
    and ``down_proj`` in the calling module's scope (call it inside an ``nn.compact`` method)."""
    gate = dense(intermediate_size, bias=bias, dtype=dtype, name="gate_proj")(x_btd)
    up = dense(intermediate_size, bias=bias, dtype=dtype, name="up_proj")(x_btd)
    return dense(hidden_size, bias=bias, dtype=dtype, name="down_proj")(act(gate) * up)


class DecoderLM(nn.Module):
    """A causal decoder: embeddings, ``Block``s, final RMSNorm and an LM head (tied or not).

    Subclasses set ``norm_plus_one`` and implement ``block(i)``, ``rope_tables()`` (name ->
    ``(inv_freq, scale)``) and, where they differ from the defaults, ``rope_key(i)``, ``embed``
    and ``cap_logits``.
    """

    config: Any
    dtype: Any = jnp.float32
    norm_plus_one: ClassVar[bool] = False

    def block(self, i: int) -> nn.Module:
        raise NotImplementedError

    def rope_tables(self) -> dict:
        raise NotImplementedError

    def rope_key(self, i: int) -> str:
        return "global"

    def embed(self, input_ids):
        return self.embed_tokens(input_ids)

    def cap_logits(self, logits):
        return logits

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32)
        self.layers = [self.block(i) for i in range(c.num_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, plus_one=self.norm_plus_one)
        if not c.tie_word_embeddings:
            self.lm_head_proj = dense(c.vocab_size, dtype=self.dtype)
        self.rope = self.rope_tables()

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
        def cos_sin(i, pos):
            inv_freq, scale = self.rope[self.rope_key(i)]
            return rope_lib.cos_sin(pos, inv_freq, scale)

        return run_decoder(self, self.embed(input_ids), input_ids, attention_mask, positions, cache,
                           output_hidden_states, return_logits, cos_sin)

    def lm_head(self, h_btd):
        """Logits [..., vocab] for final-norm hidden states [..., hidden] (any source)."""
        h_btd = h_btd.astype(self.dtype)
        if self.config.tie_word_embeddings:
            return self.cap_logits(tied_lm_head(self.embed_tokens.embedding, h_btd, self.dtype))
        return self.cap_logits(self.lm_head_proj(h_btd))


def run_decoder(model, x_btd, input_ids, attention_mask, positions, cache, output_hidden_states,
                return_logits, cos_sin_fn: Callable):
    """The decoder loop (blocks, final norm, head) shared by every ``DecoderLM``."""
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
    masks, cos_sins = {}, {}
    hidden = [x_btd] if output_hidden_states else None
    new_k, new_v = [], []
    for i, layer in enumerate(model.layers):
        w = layer.window
        if w not in masks:
            masks[w] = slot_mask(valid_bs, q_slot_t, w)
        key = model.rope_key(i)
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
    updated = KVCache(k=tuple(new_k), v=tuple(new_v), valid_bs=valid_bs, index=index + t,
                      seen_b=cache.seen_b + attention_mask.astype(jnp.int32).sum(1))
    return out, updated


# --------------------------------------------------------------------------- conversion
def _vec(src: str, size: int, dst: tuple) -> convert.Rule:
    return convert.Rule(src, (size,), dst)


def top_rules(c) -> list:
    """Embeddings, final norm and (untied) LM head rows of a Hugging Face causal LM."""
    rules = [convert.Rule("model.embed_tokens.weight", (c.vocab_size, c.hidden_size), ("embed_tokens", "embedding")),
             _vec("model.norm.weight", c.hidden_size, ("norm", "scale"))]
    if not c.tie_word_embeddings:
        rules += convert.linear_rules("lm_head", ("lm_head_proj",), c.hidden_size, c.vocab_size, bias=False)
    return rules


def attention_rules(c, i: int, qkv_bias: bool, o_bias: bool, qk_norm: bool) -> list:
    """Rows of layer ``i``'s ``self_attn`` (2-D kernels, see ``Dense``)."""
    p, L = f"model.layers.{i}.self_attn", (f"layers_{i}", "self_attn")
    d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    rules = (convert.linear_rules(f"{p}.q_proj", L + ("q_proj",), d, n * h, bias=qkv_bias)
             + convert.linear_rules(f"{p}.k_proj", L + ("k_proj",), d, k * h, bias=qkv_bias)
             + convert.linear_rules(f"{p}.v_proj", L + ("v_proj",), d, k * h, bias=qkv_bias)
             + convert.linear_rules(f"{p}.o_proj", L + ("o_proj",), n * h, d, bias=o_bias))
    if qk_norm:
        rules += [_vec(f"{p}.q_norm.weight", h, L + ("q_norm", "scale")),
                  _vec(f"{p}.k_norm.weight", h, L + ("k_norm", "scale"))]
    return rules


def mlp_rules(c, i: int, dst: tuple, bias: bool = False) -> list:
    """Rows of layer ``i``'s gated MLP (``model.layers.i.mlp.*``) into params path ``dst``."""
    p, d, f = f"model.layers.{i}.mlp", c.hidden_size, c.intermediate_size
    return (convert.linear_rules(f"{p}.gate_proj", dst + ("gate_proj",), d, f, bias=bias)
            + convert.linear_rules(f"{p}.up_proj", dst + ("up_proj",), d, f, bias=bias)
            + convert.linear_rules(f"{p}.down_proj", dst + ("down_proj",), f, d, bias=bias))


def norm_rules(c, i: int, names) -> list:
    """Per-layer norm rows ``model.layers.i.<name>.weight`` -> ``layers_i/<name>/scale``."""
    return [_vec(f"model.layers.{i}.{nm}.weight", c.hidden_size, (f"layers_{i}", nm, "scale")) for nm in names]


def convert_causal(tensors: dict, config, rules: list, dtype, family: str) -> dict:
    """Runs a causal LM table and casts to ``dtype`` (jax arrays).

    Names saved without the ``model.`` prefix (a bare ``LlamaModel``) are accepted. Rotary
    ``inv_freq`` buffers are dropped; with tied embeddings an ``lm_head.weight`` is accepted only
    if it equals the embedding table.
    """
    if not any(n.startswith("model.") for n in tensors):
        tensors = {("model." + n if not n.startswith("lm_head.") else n): w for n, w in tensors.items()}

    def ignore(name):
        if name.endswith(".inv_freq"):  # rotary buffers (rotary_emb, rotary_emb_local)
            return True
        if name == "lm_head.weight" and config.tie_word_embeddings:
            emb = tensors.get("model.embed_tokens.weight")
            if emb is not None and not np.array_equal(np.asarray(tensors[name]), np.asarray(emb)):
                raise CheckpointError(f"{family}: tie_word_embeddings=True but lm_head.weight differs "
                                      "from the embeddings")
            return True
        return False

    params = convert.run_table(tensors, rules, family, ignore)
    return jax.tree.map(lambda w: jnp.asarray(w, dtype=dtype), params)
