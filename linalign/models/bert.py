"""BERT encoder (post-LayerNorm, absolute positions, token types) as a Linen module.

Serves Hugging Face ``model_type == "bert"`` checkpoints such as all-MiniLM-L6-v2 (hidden 384,
6 layers). The transformer block (``EncoderLayer``) and the per-layer conversion rows are shared with ``linalign.models.mpnet``, which differs only in embeddings and a
relative-position attention bias.

Positions: Hugging Face BERT numbers positions 0..T-1 regardless of padding, so left padding
shifts every real token's position. This port numbers real tokens from 0 by their order
within the attention mask (padding keeps its raw index), which is identical to Hugging Face
for right padding and makes left- and right-padded batches give the same real-token states.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from linalign.models import convert
from linalign.models.base import (ModelOutput, UnsupportedConfigError, check_hf_config, config_float,
                                  config_int)

MODEL_TYPES = ("bert",)
IS_CAUSAL = False


def gelu_erf(x):
    """Exact (erf) GELU, HF's "gelu". Same formula as ``jax.nn.gelu(x, approximate=False)``, but
    written as ``x * 0.5 * (1 + erf(x / sqrt(2)))`` with multiplications, which XLA:CPU runs ~1.6x
    faster (2.6 vs 1.7 ms on a [2048, 1536] block; torch 1.6 ms)."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


ACTIVATIONS: dict[str, Callable] = {
    "gelu": gelu_erf,  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}

# Attributes that only affect training (dropout, init) or output bookkeeping.
_TRAINING_ONLY = {"hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                  "tie_word_embeddings", "gradient_checkpointing", "initializer_range"}


def encoder_fields(hf: dict, family: str, max_positions: int) -> dict:
    """The typed fields BERT-style configs share, as ``Config`` keyword arguments.

    Raises:
      UnsupportedConfigError: a decoder config, an unknown activation, a missing or ill-typed
        size (``config_int``), or a hidden size not divisible by the head count.
    """
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise UnsupportedConfigError(f"{family} port is an encoder; is_decoder/add_cross_attention "
                                     "must be false")
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise UnsupportedConfigError(f"{family}: hidden_act {hf.get('hidden_act')!r} not supported; "
                                     f"expected one of {sorted(ACTIVATIONS)}")
    d = config_int(hf, "hidden_size", family)
    n = config_int(hf, "num_attention_heads", family)
    if d % n:
        raise UnsupportedConfigError(f"{family}: hidden_size {d} is not divisible by num_attention_heads {n}")
    return dict(vocab_size=config_int(hf, "vocab_size", family), hidden_size=d,
                num_layers=config_int(hf, "num_hidden_layers", family), num_heads=n,
                intermediate_size=config_int(hf, "intermediate_size", family, 4 * d),
                max_position_embeddings=config_int(hf, "max_position_embeddings", family, max_positions),
                layer_norm_eps=config_float(hf, "layer_norm_eps", family, 1e-12),
                hidden_act=hf.get("hidden_act", "gelu"))


@dataclasses.dataclass(frozen=True)
class Config:
    """BERT hyperparameters (names follow Hugging Face's BertConfig)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, hf: dict) -> "Config":
        """Builds a Config from config.json, refusing attributes this port does not implement."""
        check_hf_config(hf, {
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
            "hidden_act", "position_embedding_type", "pad_token_id", "is_decoder",
            "add_cross_attention"}, "bert", ignorable=_TRAINING_ONLY)
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedConfigError(
                f"bert: position_embedding_type {hf['position_embedding_type']!r} not supported "
                "(only 'absolute')")
        return cls(**encoder_fields(hf, "bert", 512),
                   type_vocab_size=config_int(hf, "type_vocab_size", "bert", 2),
                   pad_token_id=config_int(hf, "pad_token_id", "bert", 0, minimum=0))


# ----------------------------------------------------------------------------- modules
class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (as PyTorch does for float32 models)."""

    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd):
        d = x_btd.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        x = x_btd.astype(jnp.float32)
        mu = x.mean(-1, keepdims=True)
        var = jnp.square(x - mu).mean(-1, keepdims=True)
        y = (x - mu) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32) + bias
        return y.astype(self.dtype)


class EncoderLayer(nn.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x)).

    Attributes:
      hidden_size / num_heads / intermediate_size / layer_norm_eps / hidden_act: shapes.
      dtype: activation dtype (params are cast to it at use).
    """

    hidden_size: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    hidden_act: str = "gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd, bias_bnts):
        """Args: x_btd [B, T, D]; bias_bnts [B or 1, N or 1, T, S] additive attention bias."""
        d, n = self.hidden_size, self.num_heads
        h = d // n
        init = nn.initializers.normal(0.02)
        zeros = nn.initializers.zeros
        p = lambda name, shape, i=init: self.param(name, i, shape, jnp.float32).astype(self.dtype)
        x = x_btd.astype(self.dtype)
        q_btnh = jnp.einsum("btd,dnh->btnh", x, p("q_dnh", (d, n, h))) + p("q_bias_nh", (n, h), zeros)
        k_bsnh = jnp.einsum("bsd,dnh->bsnh", x, p("k_dnh", (d, n, h))) + p("k_bias_nh", (n, h), zeros)
        v_bsnh = jnp.einsum("bsd,dnh->bsnh", x, p("v_dnh", (d, n, h))) + p("v_bias_nh", (n, h), zeros)
        # Scores and softmax in float32 even for low-precision activations.
        scores = jnp.einsum("btnh,bsnh->bnts", q_btnh, k_bsnh,
                            preferred_element_type=jnp.float32) / math.sqrt(h)
        probs = jax.nn.softmax(scores + bias_bnts, axis=-1).astype(self.dtype)
        ctx_btnh = jnp.einsum("bnts,bsnh->btnh", probs, v_bsnh)
        attn_btd = jnp.einsum("btnh,nhd->btd", ctx_btnh, p("o_nhd", (n, h, d))) + p("o_bias_d", (d,), zeros)
        x = LayerNorm(self.layer_norm_eps, self.dtype, name="attn_ln")(x + attn_btd)
        f = self.intermediate_size
        up_btf = jnp.einsum("btd,df->btf", x, p("up_df", (d, f))) + p("up_bias_f", (f,), zeros)
        up_btf = ACTIVATIONS[self.hidden_act](up_btf)
        down_btd = jnp.einsum("btf,fd->btd", up_btf, p("down_fd", (f, d))) + p("down_bias_d", (d,), zeros)
        return LayerNorm(self.layer_norm_eps, self.dtype, name="mlp_ln")(x + down_btd)


def key_padding_bias(mask_bs: jax.Array) -> jax.Array:
    """[B, S] 0/1 mask -> [B, 1, 1, S] additive float32 bias (large negative on padding keys)."""
    return jnp.where(mask_bs[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min / 2)


def mask_positions(mask_bt: jax.Array) -> jax.Array:
    """[B, T] positions: real tokens numbered 0.. in order, padding keeps its raw index."""
    raw = jnp.broadcast_to(jnp.arange(mask_bt.shape[1]), mask_bt.shape)
    return jnp.where(mask_bt > 0, jnp.cumsum(mask_bt, axis=1) - 1, raw)


class Model(nn.Module):
    """BERT encoder. ``apply({"params": p}, ids, mask, output_hidden_states=...)`` -> ModelOutput.

    Attributes:
      config: Config.
      dtype: activation dtype (float32 default).
    """

    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, output_hidden_states: bool = False,
                 return_logits: bool = True, token_type_ids=None) -> ModelOutput:
        """Runs the encoder.

        Args:
          input_ids: [B, T] int token ids.
          attention_mask: [B, T] 1 for real tokens, 0 for padding (either side).
          output_hidden_states: also return embeddings + every layer's output.
          return_logits: accepted for the shared contract; encoders have no LM head, so
            ``logits`` is always None.
          token_type_ids: optional [B, T] segment ids (zeros by default, as in HF).

        Returns:
          ModelOutput with last_hidden_state [B, T, D] and optional hidden_states
          (num_layers + 1 entries).
        """
        c = self.config
        emb = lambda name, n: self.param(name, nn.initializers.normal(0.02), (n, c.hidden_size),
                                         jnp.float32)
        word_vd = emb("word_embeddings", c.vocab_size)
        pos_pd = emb("position_embeddings", c.max_position_embeddings)
        type_yd = emb("token_type_embeddings", c.type_vocab_size)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        pos_bt = mask_positions(attention_mask)
        x = word_vd[input_ids] + pos_pd[pos_bt] + type_yd[token_type_ids]
        x = LayerNorm(c.layer_norm_eps, self.dtype, name="embeddings_ln")(x)
        bias = key_padding_bias(attention_mask)
        states = [x]
        for i in range(c.num_layers):
            x = EncoderLayer(c.hidden_size, c.num_heads, c.intermediate_size, c.layer_norm_eps,
                             c.hidden_act, self.dtype, name=f"layer_{i}")(x, bias)
            states.append(x)
        return ModelOutput(last_hidden_state=x,
                           hidden_states=tuple(states) if output_hidden_states else None)


# ----------------------------------------------------------------------------- conversion
def ln_rules(src: str, dst: tuple, d: int) -> list[convert.Rule]:
    return [convert.Rule(src + ".weight", (d,), dst + ("scale",)),
            convert.Rule(src + ".bias", (d,), dst + ("bias",))]


def layer_rules(i: int, src: str, d: int, n: int, f: int, attn: dict) -> list[convert.Rule]:
    """Rules for one post-LN encoder layer.

    Args:
      i: layer index; src: HF prefix of the layer ("encoder.layer.3");
      d / n / f: hidden size, heads, intermediate size;
      attn: HF sub-names {"q","k","v","o","attn_ln"} relative to ``src``.
    """
    h = d // n
    dst = (f"layer_{i}",)
    rules = []
    for name in ("q", "k", "v"):
        rules += convert.linear_rules(f"{src}.{attn[name]}", dst, d, d, kernel_shape=(d, n, h),
                                      bias_shape=(n, h), names=(f"{name}_dnh", f"{name}_bias_nh"))
    rules += convert.linear_rules(f"{src}.{attn['o']}", dst, d, d, kernel_shape=(n, h, d),
                                  names=("o_nhd", "o_bias_d"))
    rules += ln_rules(f"{src}.{attn['attn_ln']}", dst + ("attn_ln",), d)
    rules += convert.linear_rules(f"{src}.intermediate.dense", dst, d, f, names=("up_df", "up_bias_f"))
    rules += convert.linear_rules(f"{src}.output.dense", dst, f, d, names=("down_fd", "down_bias_d"))
    rules += ln_rules(f"{src}.output.LayerNorm", dst + ("mlp_ln",), d)
    return rules


def conversion_table(config: Config) -> list[convert.Rule]:
    """The full HF BertModel -> params table."""
    c = config
    d = c.hidden_size
    table = [
        convert.Rule("embeddings.word_embeddings.weight", (c.vocab_size, d), ("word_embeddings",)),
        convert.Rule("embeddings.position_embeddings.weight", (c.max_position_embeddings, d),
                     ("position_embeddings",)),
        convert.Rule("embeddings.token_type_embeddings.weight", (c.type_vocab_size, d),
                     ("token_type_embeddings",)),
    ] + ln_rules("embeddings.LayerNorm", ("embeddings_ln",), d)
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "attn_ln": "attention.output.LayerNorm"}
    for i in range(c.num_layers):
        table += layer_rules(i, f"encoder.layer.{i}", d, c.num_heads, c.intermediate_size, names)
    return table


def convert_encoder(tensors: dict, table: list, prefix: str, ignore: tuple, family: str) -> dict:
    """Runs an encoder table after stripping a task model's ``prefix`` (e.g. ``bert.``); names
    starting with an ``ignore`` entry (pooler, heads, saved position-id buffers) are dropped."""
    return convert.run_table(convert.strip_prefix(tensors, (prefix,)), table, family,
                             lambda name: name.startswith(ignore))


def convert_params(tensors: dict, config: Config) -> dict:
    """HF BERT state dict (name -> np.ndarray) -> params pytree of float32 numpy arrays."""
    return convert_encoder(tensors, conversion_table(config), "bert.", ("pooler.", "cls.", "embeddings.position_ids",
                                                                        "embeddings.token_type_ids"), "bert")
