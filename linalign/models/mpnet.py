"""MPNet encoder (all-mpnet-base-v2) as a Linen module.

Differences from BERT (``linalign.models.bert``): no token types; absolute positions start at
``padding_idx + 1`` and are numbered over non-padding tokens; every layer adds a shared
relative-position bias from 32 log-spaced buckets (T5-style, bidirectional, max distance 128).

Hugging Face details reproduced on purpose:
  * position ids come from ``input_ids != 1`` (HF hard-codes padding_idx = 1, whatever the
    config's pad_token_id), not from the attention mask;
  * the relative bias is computed from raw indices 0..T-1, and the bucket count used is 32
    regardless of ``relative_attention_num_buckets`` (so this port only accepts 32).
Both keep left- and right-padded batches consistent: positions count real tokens, and
relative distances between real tokens do not depend on where the padding is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from linalign.models import bert, convert
from linalign.models.base import ModelOutput, UnsupportedConfigError, check_hf_config, config_int

MODEL_TYPES = ("mpnet",)
IS_CAUSAL = False
PADDING_IDX = 1  # hard-coded in HF MPNetEmbeddings
NUM_BUCKETS = 32
MAX_DISTANCE = 128


@dataclasses.dataclass(frozen=True)
class Config:
    """MPNet hyperparameters (names follow Hugging Face's MPNetConfig)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    hidden_act: str = "gelu"
    relative_attention_num_buckets: int = NUM_BUCKETS
    pad_token_id: int = PADDING_IDX

    @classmethod
    def from_hf_config(cls, hf: dict) -> "Config":
        """Builds a Config from config.json, refusing attributes this port does not implement."""
        check_hf_config(hf, {
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "layer_norm_eps", "hidden_act",
            "relative_attention_num_buckets", "pad_token_id", "is_decoder", "add_cross_attention"},
            "mpnet", ignorable=bert._TRAINING_ONLY)
        buckets = config_int(hf, "relative_attention_num_buckets", "mpnet", NUM_BUCKETS)
        if buckets != NUM_BUCKETS:
            raise UnsupportedConfigError(
                f"mpnet: relative_attention_num_buckets={buckets} not supported (Hugging Face's "
                f"MPNet always buckets into {NUM_BUCKETS}, so other values are ill-defined)")
        return cls(**bert.encoder_fields(hf, "mpnet", 514), relative_attention_num_buckets=buckets,
                   pad_token_id=config_int(hf, "pad_token_id", "mpnet", PADDING_IDX, minimum=0))


def relative_position_bucket(rel_ts: jax.Array, num_buckets: int = NUM_BUCKETS,
                             max_distance: int = MAX_DISTANCE) -> jax.Array:
    """Maps relative positions (key - query) to bucket ids, as HF MPNet does.

    Half the buckets are for each direction; within a half, distances below a quarter of the
    buckets are exact and larger ones are log-spaced up to ``max_distance``.
    """
    n = -rel_ts
    half = num_buckets // 2
    ret = jnp.where(n < 0, half, 0)
    n = jnp.abs(n)
    max_exact = half // 2
    # Guard log(0); those entries take the exact branch anyway.
    nf = jnp.maximum(n, 1).astype(jnp.float32)
    large = max_exact + (jnp.log(nf / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return ret + jnp.where(n < max_exact, n, large)


class Model(nn.Module):
    """MPNet encoder. ``apply({"params": p}, ids, mask, output_hidden_states=...)`` -> ModelOutput."""

    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, output_hidden_states: bool = False,
                 return_logits: bool = True) -> ModelOutput:
        """Runs the encoder.

        Args:
          input_ids: [B, T] int token ids (padding must use id 1, as HF assumes).
          attention_mask: [B, T] 1 for real tokens, 0 for padding.
          output_hidden_states: also return embeddings + every layer's output.
          return_logits: accepted for the shared contract; ``logits`` is always None.

        Returns:
          ModelOutput with last_hidden_state [B, T, D], optional hidden_states.
        """
        c = self.config
        emb = lambda name, n: self.param(name, nn.initializers.normal(0.02), (n, c.hidden_size),
                                         jnp.float32)
        word_vd = emb("word_embeddings", c.vocab_size)
        pos_pd = emb("position_embeddings", c.max_position_embeddings)
        rel_bias_kn = self.param("relative_attention_bias", nn.initializers.normal(0.02),
                                 (c.relative_attention_num_buckets, c.num_heads), jnp.float32)
        not_pad = (input_ids != PADDING_IDX).astype(jnp.int32)
        pos_bt = jnp.cumsum(not_pad, axis=1) * not_pad + PADDING_IDX
        x = word_vd[input_ids] + pos_pd[pos_bt]
        x = bert.LayerNorm(c.layer_norm_eps, self.dtype, name="embeddings_ln")(x)
        t = input_ids.shape[1]
        idx = jnp.arange(t)
        bucket_ts = relative_position_bucket(idx[None, :] - idx[:, None])
        rel_nts = jnp.transpose(rel_bias_kn[bucket_ts], (2, 0, 1))
        bias_bnts = rel_nts[None] + bert.key_padding_bias(attention_mask)
        states = [x]
        for i in range(c.num_layers):
            x = bert.EncoderLayer(c.hidden_size, c.num_heads, c.intermediate_size, c.layer_norm_eps,
                                  c.hidden_act, self.dtype, name=f"layer_{i}")(x, bias_bnts)
            states.append(x)
        return ModelOutput(last_hidden_state=x,
                           hidden_states=tuple(states) if output_hidden_states else None)


def conversion_table(config: Config) -> list[convert.Rule]:
    """The full HF MPNetModel -> params table."""
    c = config
    d = c.hidden_size
    buckets = (c.relative_attention_num_buckets, c.num_heads)
    table = [
        convert.Rule("embeddings.word_embeddings.weight", (c.vocab_size, d), ("word_embeddings",)),
        convert.Rule("embeddings.position_embeddings.weight", (c.max_position_embeddings, d),
                     ("position_embeddings",)),
        convert.Rule("encoder.relative_attention_bias.weight", buckets, ("relative_attention_bias",)),
    ] + bert.ln_rules("embeddings.LayerNorm", ("embeddings_ln",), d)
    names = {"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
             "o": "attention.attn.o", "attn_ln": "attention.LayerNorm"}
    for i in range(c.num_layers):
        table += bert.layer_rules(i, f"encoder.layer.{i}", d, c.num_heads, c.intermediate_size, names)
    return table


def convert_params(tensors: dict, config: Config) -> dict:
    """HF MPNet state dict (name -> np.ndarray) -> params pytree of numpy arrays."""
    return bert.convert_encoder(tensors, conversion_table(config), "mpnet.",
                                ("pooler.", "lm_head.", "embeddings.position_ids"), "mpnet")
