"""Cross-model generation: source transformer -> affine map -> target LM head (the paper's setup).

At each step the SOURCE model's blocks and final norm give the hidden state h of the last token,
the learned map turns it into the target's hidden space, and the TARGET model's frozen LM head
(``lm_head``, including any final soft-capping) gives logits over the TARGET vocabulary. Tokens
are therefore chosen in the target vocabulary, while the next step again needs the source model.

How a target token is fed back (the paper does not spell this out; this is the faithful choice):
the target tokens generated so far are decoded to text with the target tokenizer, that text is
re-encoded with the source tokenizer, and only the difference is fed to the source model:

* usually the new source tokens extend the ones already fed, and are fed one at a time through a
  jitted single-token cache step (the last one's hidden state drives the next choice);
* when re-encoding changes earlier source tokens (for example "Par" + "is" becomes "Paris"), the
  KV cache is rolled back to the longest common prefix (``KVCache.rollback``: the slots are masked
  out, nothing is copied) and the corrected suffix is fed, so the source model always sees exactly
  the source tokenization of prompt + generated text, as if it had read the text afresh;
* a target token that adds no complete character (a partial UTF-8 byte, or an empty piece) gives
  the source nothing new to read; decoding then stops with ``finish_reason="stalled"`` rather
  than looping on an unchanged state.

When source and target share one tokenizer (``Tokenizer.same_tokens_as``: a self-map, or two
models of one family), the target's ids are the source's ids and are fed as generated, with no
text round trip (``retokenize=None``, the default). Re-encoding would then only replace the
model's own non-canonical splits (a generated "\n" "\n" re-read as "\n\n") and change the context
the source reads; ``retokenize=True`` forces the round trip anyway, which measures what
re-tokenization alone costs.

The generated text is encoded separately from the prompt (the prompt's source tokens are fixed
after prefill). Batch size is 1: re-tokenization is per sequence and happens on the host.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from linalign.generate.decode import GREEDY, Sampling, bucket, eos_ids_of, select_token
from linalign.models import llama


@dataclasses.dataclass
class CrossGeneration:
    """Result of ``generate_from_hidden``.

    Attributes:
      text: decoded target-vocabulary continuation (special tokens removed).
      target_ids: generated target token ids (EOS excluded).
      source_ids: source token ids the source model read for the generated text.
      finish_reason: "eos", "length", "stalled" or "cache_full".
      rollbacks: how many times re-tokenization rewrote already-fed source tokens.
    """

    text: str
    target_ids: list
    source_ids: list
    finish_reason: str
    rollbacks: int = 0


def as_map_fn(map_fn, d_src: Optional[int] = None, d_tgt: Optional[int] = None) -> Callable:
    """The map as a jittable h[..., d_src] -> [..., d_tgt].

    Args:
      map_fn: a saved map (its ``.safetensors`` file, or a folder holding map.safetensors; read
        with ``AffineMap.load``), an ``AffineMap``, a (W [d_src, d_tgt], b [d_tgt]) pair, or a
        jittable callable (used as is).
      d_src, d_tgt: the source and target hidden sizes, checked against W when given.

    Raises:
      ValueError: W or b does not fit the two models' hidden sizes.
    """
    if isinstance(map_fn, (str, os.PathLike)):
        from linalign.align.affine_map import AffineMap

        map_fn = AffineMap.load(map_fn)
    if hasattr(map_fn, "w") and hasattr(map_fn, "b"):  # an AffineMap: use its arrays in the jitted step
        map_fn = (map_fn.w, map_fn.b)
    if callable(map_fn):
        return map_fn
    w, b = map_fn
    w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
    if w.ndim != 2 or b.shape != (w.shape[1],):
        raise ValueError(f"the map needs W [d_src, d_tgt] and b [d_tgt], got {w.shape} and {b.shape}")
    if (d_src is not None and w.shape[0] != d_src) or (d_tgt is not None and w.shape[1] != d_tgt):
        raise ValueError(f"the map's W is {tuple(w.shape)} but the source's hidden size is {d_src} and the "
                         f"target's {d_tgt}: it was fitted for other models")
    return lambda h: jnp.einsum("...s,st->...t", h.astype(jnp.float32), w) + b


def _hidden_size(model) -> Optional[int]:
    return getattr(getattr(model, "config", None), "hidden_size", None)


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class CrossDecoder:
    """Compiled prefill/step programs for one (source, map, target) triple; reuse across prompts.

    Args:
      source, target: loaded causal models (``module``, ``params``, ``tokenizer``, ``config``).
      map_fn: see ``as_map_fn`` (a saved map's path, an AffineMap, (W, b) or a callable).
    """

    def __init__(self, source, map_fn, target):
        self.source, self.target = source, target
        self.shared_tokenizer = source.tokenizer.same_tokens_as(target.tokenizer)
        self.map_fn = as_map_fn(map_fn, _hidden_size(source), _hidden_size(target))
        src_mod, tgt_mod = source.module, target.module

        def head(tgt_params, h_bd):
            z_bd = self.map_fn(h_bd.astype(jnp.float32))
            logits = tgt_mod.apply({"params": tgt_params}, z_bd, method=type(tgt_mod).lm_head)
            return logits.astype(jnp.float32)

        def prefill(src_params, tgt_params, ids_bt, mask_bt, cache_len):
            c = src_mod.config
            cache = llama.init_cache(c.num_layers, ids_bt.shape[0], cache_len, c.num_kv_heads, c.head_dim,
                                     src_mod.dtype)
            out, cache = src_mod.apply({"params": src_params}, ids_bt, mask_bt, cache=cache, return_logits=False)
            return head(tgt_params, out.last_hidden_state[:, -1]), cache

        def step(src_params, tgt_params, tok_b, cache):
            out, cache = src_mod.apply({"params": src_params}, tok_b[:, None], jnp.ones_like(tok_b)[:, None],
                                       cache=cache, return_logits=False)
            return head(tgt_params, out.last_hidden_state[:, 0]), cache

        self._prefill = jax.jit(prefill, static_argnames=("cache_len",))
        self._step = jax.jit(step, donate_argnums=(3,))
        self._rollback = jax.jit(lambda cache, index: cache.rollback(index), donate_argnums=(0,))
        self._select = jax.jit(select_token, static_argnames=("sampling",))

    def generate(self, prompt: str, max_new_tokens: int = 128, chat: bool = False,
                 sampling: Sampling = GREEDY, seed: int = 0,
                 retokenize: Optional[bool] = None) -> CrossGeneration:
        """Generates target-vocabulary text for one prompt.

        Args:
          prompt: user text; with ``chat`` it is wrapped by the SOURCE tokenizer's chat template
            (the source model reads it).
          max_new_tokens: most target tokens.
          sampling: decoding rule over the target logits (greedy by default, as in the paper).
          seed: PRNG seed when sampling.
          retokenize: feed the source the re-encoded text (True) or the target's ids as they are
            (False, only with a shared tokenizer); None: re-encode unless the tokenizer is shared.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if retokenize is None:
            retokenize = not self.shared_tokenizer
        if not retokenize and not self.shared_tokenizer:
            raise ValueError(f"retokenize=False needs one tokenizer for source and target; "
                             f"{self.source.tokenizer.name!r} and {self.target.tokenizer.name!r} differ")
        s_tok, t_tok = self.source.tokenizer, self.target.tokenizer
        text = s_tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
        prompt_ids = s_tok.encode(text, add_special_tokens=not chat)
        if not prompt_ids:
            raise ValueError("prompt encodes to no source tokens")
        t_len = bucket(len(prompt_ids))
        ids = np.zeros((1, t_len), np.int32)
        mask = np.zeros((1, t_len), np.int32)
        ids[0, t_len - len(prompt_ids):], mask[0, t_len - len(prompt_ids):] = prompt_ids, 1
        room = bucket(4 * max_new_tokens + 8)  # source tokens per target token vary; leave slack
        cache_len = t_len + room
        sp, tp = self.source.params, self.target.params
        logits, cache = self._prefill(sp, tp, jnp.asarray(ids), jnp.asarray(mask), cache_len=cache_len)
        eos = set(eos_ids_of(self.target))
        rng = jax.random.PRNGKey(seed)
        tgt_ids: list[int] = []
        fed: list[int] = []
        rollbacks, reason = 0, "length"
        for _ in range(max_new_tokens):
            rng, sub = jax.random.split(rng)
            tok = int(self._select(logits, sub, sampling)[0])
            if tok in eos:
                reason = "eos"
                break
            tgt_ids.append(tok)
            gen_text = t_tok.decode(tgt_ids).rstrip("\ufffd")  # hold back an incomplete UTF-8 tail
            if retokenize:
                want = s_tok.encode(gen_text, add_special_tokens=False) if gen_text else []
            else:
                want = list(tgt_ids)
            keep = common_prefix(fed, want)
            if keep == len(fed) == len(want):
                reason = "stalled"
                break
            if len(want) > room:
                reason = "cache_full"
                break
            if keep < len(fed):
                cache = self._rollback(cache, jnp.asarray(t_len + keep, jnp.int32))
                rollbacks += 1
                fed = fed[:keep]
            for s in want[keep:]:
                logits, cache = self._step(sp, tp, jnp.asarray([s], jnp.int32), cache)
                fed.append(s)
            if keep == len(want):  # only a rollback happened: the state is that of token want[-1]
                # Re-feed the last kept token so the logits belong to the current text.
                last = (prompt_ids + want)[-1]
                cache = self._rollback(cache, jnp.asarray(t_len + keep - 1, jnp.int32))
                logits, cache = self._step(sp, tp, jnp.asarray([last], jnp.int32), cache)
        return CrossGeneration(text=t_tok.decode(tgt_ids), target_ids=tgt_ids, source_ids=fed,
                               finish_reason=reason, rollbacks=rollbacks)


def generate_from_hidden(source, map_fn, target, prompt: str, max_new_tokens: int = 128, chat: bool = False,
                         sampling: Sampling = GREEDY, seed: int = 0,
                         decoder: Optional[CrossDecoder] = None,
                         retokenize: Optional[bool] = None) -> CrossGeneration:
    """One-shot form of ``CrossDecoder(source, map_fn, target).generate(...)``."""
    decoder = decoder or CrossDecoder(source, map_fn, target)
    return decoder.generate(prompt, max_new_tokens, chat, sampling, seed, retokenize)
