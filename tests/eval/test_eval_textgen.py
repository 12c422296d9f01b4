"""Generation measures: hand-computed agreement and cosine, perplexity against a direct formula."""

import numpy as np
import pytest

from linalign.eval import textgen


def test_token_agreement_definition():
    assert textgen.token_agreement([1, 2, 3, 4], [1, 9, 3]) == pytest.approx(2 / 3, rel=0, abs=1e-12)
    assert textgen.token_agreement([1], [1, 2, 3, 4]) == pytest.approx(0.25, rel=0, abs=1e-12)
    assert textgen.token_agreement([], []) == 1.0
    assert textgen.token_agreement([5], []) == 0.0


def test_row_cosine():
    c = textgen.row_cosine(np.array([[1.0, 0], [1, 1], [0, 0]]), np.array([[2.0, 0], [-1, 1], [1, 1]]))
    np.testing.assert_allclose(c, [1.0, 0.0, 0.0], rtol=0, atol=1e-12)


class _Out:
    def __init__(self, logits):
        self.logits = logits


class _BigramLM:
    """A real (if tiny) causal LM: logits at t depend only on token t through a table."""

    name = "bigram"

    def __init__(self, table):
        self.table = table

    def __call__(self, ids, mask):
        import jax.numpy as jnp
        return _Out(jnp.asarray(self.table)[ids])


def test_perplexity_matches_direct_formula():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(6, 6)).astype(np.float32)
    lm = _BigramLM(table)
    logp = table - np.log(np.exp(table.astype(np.float64)).sum(1, keepdims=True))
    prompt, cont = [0, 3], [5, 1, 1]
    ref = -(logp[3, 5] + logp[5, 1] + logp[1, 1])
    s, n = textgen.continuation_nll(lm, prompt, cont)
    assert n == 3 and s == pytest.approx(ref, rel=1e-5, abs=1e-5)
    ppl = textgen.perplexity(lm, [prompt, [2]], [cont, [4]])
    assert ppl == pytest.approx(np.exp((ref - logp[2, 4]) / 4), rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="at least one prompt token"):
        textgen.continuation_nll(lm, [], [1])
