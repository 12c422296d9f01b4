"""KV-cached greedy and sampled decoding for the causal ports, compiled once per shape bucket.

``generate(module, params, ids, mask, max_new_tokens, eos_ids)`` runs prefill and the whole
decoding loop inside one ``jax.jit``: the cache is preallocated to ``prompt_bucket +
max_new_tokens`` (rounded up), so the loop body has static shapes and one ``lax.while_loop``
step per token, leaving early once every row has produced EOS. Prompts are left-aligned or
right-aligned on input; they are re-packed to left padding and padded on the left to a
power-of-two bucket, so many prompt lengths share one compiled program.

Decoding rules: greedy (``temperature == 0``) takes the first maximum like ``torch.argmax``;
sampling divides logits by the temperature, keeps the ``top_k`` largest and then the smallest
set whose probability reaches ``top_p`` (transformers' order of warpers), and samples.
Rows that have produced EOS keep emitting ``pad_id``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from linalign.models import llama


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Decoding rule. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


GREEDY = Sampling()


def select_token(logits_bv: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """Next token per row from [B, V] logits: [B] int32."""
    logits_bv = logits_bv.astype(jnp.float32)
    if sampling.temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = logits_bv / sampling.temperature
    neg = jnp.finfo(jnp.float32).min
    if sampling.top_k:
        kth_b = jax.lax.top_k(logits_bv, sampling.top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth_b, neg, logits_bv)
    if sampling.top_p < 1.0:
        sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        # keep a sorted token if the mass strictly before it is below top_p (the top token always stays)
        before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
        cutoff_b = jnp.min(jnp.where(before_bv < sampling.top_p, sorted_bv, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < cutoff_b, neg, logits_bv)
    return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)


def bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum) (bounded set of compiled prompt shapes)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def left_pack(ids_bt: np.ndarray, mask_bt: np.ndarray, length: int, pad_id: int):
    """Moves each row's real tokens to the right end of a [B, length] array (left padding)."""
    ids_bt, mask_bt = np.asarray(ids_bt), np.asarray(mask_bt).astype(bool)
    b = ids_bt.shape[0]
    out_ids = np.full((b, length), pad_id, np.int32)
    out_mask = np.zeros((b, length), np.int32)
    for i in range(b):
        row = ids_bt[i][mask_bt[i]]
        if len(row) == 0:
            raise ValueError(f"prompt row {i} is empty (all padding)")
        if len(row) > length:
            raise ValueError(f"prompt row {i} has {len(row)} tokens > bucket {length}")
        out_ids[i, length - len(row):] = row
        out_mask[i, length - len(row):] = 1
    return out_ids, out_mask


@dataclasses.dataclass
class Generation:
    """Decoded tokens.

    Attributes:
      tokens: [B, max_new_tokens] int32 new tokens (``pad_id`` after EOS; EOS itself included).
      lengths: [B] number of new tokens up to and including EOS.
      finished: [B] bool, row produced EOS.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    finished: np.ndarray

    def rows(self) -> list[list[int]]:
        """New tokens per row, without padding (EOS kept)."""
        return [self.tokens[i, : self.lengths[i]].tolist() for i in range(len(self.lengths))]


def _decode_program(module, new_cache_fn, params, ids_bt, mask_bt, rng, *, max_new: int, cache_len: int,
                    sampling: Sampling, eos_ids: tuple, pad_id: int, cache_dtype):
    b = ids_bt.shape[0]
    cache = new_cache_fn(b, cache_len, cache_dtype)
    out, cache = module.apply({"params": params}, ids_bt, mask_bt, cache=cache, return_logits=False)
    logits_bv = module.apply({"params": params}, out.last_hidden_state[:, -1], method=type(module).lm_head)
    rng, sub = jax.random.split(rng)
    tok_b = select_token(logits_bv, sub, sampling)
    eos = jnp.asarray(eos_ids, jnp.int32)
    tokens_bn = jnp.full((b, max_new), pad_id, jnp.int32).at[:, 0].set(tok_b)
    done_b = jnp.isin(tok_b, eos)
    lengths_b = jnp.ones((b,), jnp.int32)

    def cond(state):
        step, _, _, done_b, _, _, _ = state
        return (step < max_new) & ~jnp.all(done_b)

    def body(state):
        step, cache, tok_b, done_b, tokens_bn, lengths_b, rng = state
        ones = jnp.ones((b, 1), jnp.int32)
        out, cache = module.apply({"params": params}, tok_b[:, None], ones, cache=cache, return_logits=False)
        logits_bv = module.apply({"params": params}, out.last_hidden_state[:, 0], method=type(module).lm_head)
        rng, sub = jax.random.split(rng)
        nxt_b = select_token(logits_bv, sub, sampling)
        nxt_b = jnp.where(done_b, pad_id, nxt_b)
        tokens_bn = jax.lax.dynamic_update_slice(tokens_bn, nxt_b[:, None], (0, step))
        lengths_b = lengths_b + (~done_b).astype(jnp.int32)
        done_b = done_b | jnp.isin(nxt_b, eos)
        return step + 1, cache, nxt_b, done_b, tokens_bn, lengths_b, rng

    state = (jnp.asarray(1, jnp.int32), cache, tok_b, done_b, tokens_bn, lengths_b, rng)
    _, _, _, done_b, tokens_bn, lengths_b, _ = jax.lax.while_loop(cond, body, state)
    return tokens_bn, lengths_b, done_b


class Decoder:
    """Compiled generation for one model; reuse it so programs are compiled once per bucket.

    Args:
      module: a causal port's ``Model`` (llama or gemma3).
      params: its params.
      cache_dtype: dtype of stored keys/values (defaults to the module's activation dtype).
    """

    def __init__(self, module, params, cache_dtype=None):
        self.module, self.params = module, params
        c = module.config
        self.cache_dtype = cache_dtype or module.dtype
        new_cache_fn = functools.partial(llama.init_cache, c.num_layers, num_kv_heads=c.num_kv_heads,
                                         head_dim=c.head_dim)
        self._program = jax.jit(
            functools.partial(_decode_program, module, lambda b, n, dt: new_cache_fn(b, n, dtype=dt)),
            static_argnames=("max_new", "cache_len", "sampling", "eos_ids", "pad_id", "cache_dtype"))

    def generate(self, ids_bt, mask_bt=None, max_new_tokens: int = 32, eos_ids: Sequence[int] = (),
                 sampling: Sampling = GREEDY, seed: int = 0, pad_id: int = 0) -> Generation:
        """Decodes up to ``max_new_tokens`` per row.

        Args:
          ids_bt: [B, T] prompt ids, left- or right-padded.
          mask_bt: [B, T] 1 real / 0 padding (default: all real).
          max_new_tokens: tokens to generate per row (EOS included).
          eos_ids: token ids that end a row.
          sampling: ``Sampling`` rule (greedy by default).
          seed: PRNG seed for sampling.
          pad_id: filler for rows after EOS and for prompt padding.
        """
        ids_bt = np.asarray(ids_bt)
        if ids_bt.ndim != 2:
            raise ValueError(f"ids must be [batch, seq], got shape {ids_bt.shape}")
        mask_bt = np.ones_like(ids_bt) if mask_bt is None else np.asarray(mask_bt)
        if mask_bt.shape != ids_bt.shape:
            raise ValueError(f"mask shape {mask_bt.shape} != ids shape {ids_bt.shape}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        vocab = self.module.config.vocab_size
        real = ids_bt[mask_bt > 0]
        if real.size and (real.min() < 0 or real.max() >= vocab):
            raise ValueError(f"prompt ids outside the vocabulary [0, {vocab})")
        t = bucket(int(mask_bt.sum(1).max()))
        ids, mask = left_pack(ids_bt, mask_bt, t, pad_id)
        cache_len = t + (-(-max_new_tokens // 32) * 32)
        tokens, lengths, done = self._program(
            self.params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(seed), max_new=int(max_new_tokens),
            cache_len=cache_len, sampling=sampling, eos_ids=tuple(int(e) for e in eos_ids), pad_id=int(pad_id),
            cache_dtype=self.cache_dtype)
        return Generation(np.asarray(tokens), np.asarray(lengths), np.asarray(done))


def eos_ids_of(model) -> tuple:
    """EOS ids from a loaded model's config and tokenizer."""
    ids = set()
    e = getattr(model.config, "eos_token_id", None)
    ids.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "eos_id", None) is not None:
        ids.add(tok.eos_id)
    return tuple(sorted(int(i) for i in ids))


def generate_text(model, prompts: Sequence[str], max_new_tokens: int = 64, chat: bool = False,
                  sampling: Sampling = GREEDY, seed: int = 0, decoder: Optional[Decoder] = None) -> list[str]:
    """Generates continuations for text prompts with a loaded causal model.

    Args:
      model: a ``LoadedModel`` (``module``, ``params``, ``tokenizer``, ``config``).
      prompts: B strings.
      chat: wrap each prompt as a user turn with the tokenizer's chat template.
      decoder: a ``Decoder`` to reuse (compiled programs are kept on it).

    Returns:
      B decoded strings (special tokens removed).
    """
    tok = model.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": p}]) if chat else p for p in prompts]
    enc = tok.encode_batch(texts, add_special_tokens=not chat, padding_side="left")
    decoder = decoder or Decoder(model.module, model.params)
    gen = decoder.generate(enc.ids, enc.mask, max_new_tokens, eos_ids_of(model), sampling, seed, tok.pad_id)
    return [tok.decode(row) for row in gen.rows()]
