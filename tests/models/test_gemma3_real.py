"""Tier 3: Gemma-3-270M (Q4_K_M GGUF) against transformers' own load of the same file."""

from __future__ import annotations

import numpy as np
import pytest

from causal_parity import gguf_reference, kl_divergence, ref_cache_dir

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def gemma(request, tmp_path_factory):
    from linalign import assets
    from linalign.checkpoints.gguf import read_gguf
    from linalign.models import gemma3

    path = assets.path("gemma3-270m")
    cfg, tensors, tok = read_gguf(path)
    config = gemma3.Config.from_hf_config(cfg)
    params = gemma3.convert_params(tensors, config)
    ref = gguf_reference(ref_cache_dir(request, tmp_path_factory), path, PROMPTS, chat=False)
    return config, gemma3.Model(config), params, tok, ref


def test_config_read_from_gguf(gemma):
    c = gemma[0]
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (640, 18, 4, 1, 256)
    assert c.sliding_windows.count(None) == 3 and set(c.sliding_windows) == {512, None}
    assert c.rope_global.theta == 1e6 and c.rope_local.theta == 1e4 and c.vocab_size == 262144


def test_tokenizer_and_hidden_states_match_transformers(gemma):
    import jax.numpy as jnp

    config, model, params, tok, ref = gemma
    enc = tok.encode_batch(PROMPTS, padding_side="left")
    for i in range(len(PROMPTS)):
        np.testing.assert_array_equal(enc.ids[i][enc.mask[i] > 0], ref[f"ids_{i}"])
    out = model.apply({"params": params}, jnp.asarray(enc.ids), jnp.asarray(enc.mask))
    t = enc.ids.shape[1]
    for i in range(len(PROMPTS)):
        n = int(enc.lengths[i])
        np.testing.assert_allclose(np.asarray(out.last_hidden_state[i, t - n:]), ref[f"hidden_{i}"],
                                   atol=1e-2, rtol=1e-2)
        kl = kl_divergence(ref[f"logits_{i}"], np.asarray(out.logits[i, -1]))
        assert kl <= 1e-4, f"prompt {i}: next-token KL {kl:.2e}"


def test_greedy_generation_matches_transformers(gemma):
    from linalign.generate import decode

    config, model, params, tok, ref = gemma
    enc = tok.encode_batch(PROMPTS, padding_side="left")
    gen = decode.Decoder(model, params).generate(enc.ids, enc.mask, max_new_tokens=20, eos_ids=(tok.eos_id,),
                                                 pad_id=tok.pad_id)
    for i, row in enumerate(gen.rows()):
        np.testing.assert_array_equal(row, ref[f"gen_{i}"][: len(row)], err_msg=PROMPTS[i])
