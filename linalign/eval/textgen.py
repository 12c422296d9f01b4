"""Measures of cross-model generated text: token agreement, perplexity, embedding cosine."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def token_agreement(generated_ids: Sequence[int], reference_ids: Sequence[int]) -> float:
    """Positional agreement of a generation with a reference generation (same vocabulary).

    Definition: with L = len(reference_ids), the fraction of positions t < L where
    generated_ids[t] == reference_ids[t]; positions the generation does not reach count as
    disagreements, extra generated tokens are ignored. An empty reference gives 1.0 when the
    generation is empty too, else 0.0.

    Args:
      generated_ids: token ids generated through the map (target vocabulary).
      reference_ids: the target model's own greedy continuation of the same prompt.
    """
    g, r = list(generated_ids), list(reference_ids)
    if not r:
        return 1.0 if not g else 0.0
    return sum(1 for t in range(len(r)) if t < len(g) and g[t] == r[t]) / len(r)


def repetition_rate(ids: Sequence[int], n: int = 4) -> float:
    """Share of a sequence's token n-grams that already occurred earlier in it.

    Definition: with the L - n + 1 n-grams of ``ids`` in order, the fraction that equal an
    earlier n-gram of the same sequence. 0 for a sequence with no repeated n-gram (or shorter
    than n + 1 tokens); close to 1 for a loop ("the the the ...", runs of newlines).

    Args:
      ids: token ids of one generated output.
      n: n-gram length.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = list(ids)
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    seen, rep = set(), 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def continuation_nll(model, prompt_ids: Sequence[int], cont_ids: Sequence[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ``cont_ids`` after ``prompt_ids`` under a causal model.

    Args:
      model: a causal ``LoadedModel`` (its __call__ returns logits [1, T, vocab]).
      prompt_ids: prompt token ids (with BOS if the model uses one).
      cont_ids: continuation token ids.

    Returns:
      (sum of -log p(cont_t | prefix), number of continuation tokens).
    """
    import jax
    import jax.numpy as jnp

    cont = list(cont_ids)
    if not cont:
        return 0.0, 0
    if not prompt_ids:
        raise ValueError("need at least one prompt token to condition the first continuation token")
    ids = np.asarray([list(prompt_ids) + cont], np.int32)
    out = model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
    if out.logits is None:
        raise ValueError(f"{getattr(model, 'name', 'model')} returned no logits; is it a causal LM?")
    logp = jax.nn.log_softmax(out.logits[0].astype(jnp.float32), axis=-1)
    p = len(prompt_ids)
    # The logit at position t predicts token t + 1.
    pos = np.arange(p - 1, p - 1 + len(cont))
    nll = -np.asarray(logp)[pos, np.asarray(cont)]
    return float(nll.sum()), len(cont)


def perplexity(model, prompt_ids_list, cont_ids_list) -> float:
    """exp(total NLL / total tokens) of several continuations under one causal model."""
    tot, n = 0.0, 0
    for p, c in zip(prompt_ids_list, cont_ids_list):
        s, k = continuation_nll(model, p, c)
        tot, n = tot + s, n + k
    if n == 0:
        return float("nan")
    return float(np.exp(tot / n))


def row_cosine(x_nd: np.ndarray, y_nd: np.ndarray) -> np.ndarray:
    """[n] cosine similarity of matching rows (0 where a row is all zeros)."""
    x, y = np.asarray(x_nd, np.float64), np.asarray(y_nd, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    den = nx * ny
    return np.where(den > 0, (x * y).sum(1) / np.where(den > 0, den, 1), 0.0)
