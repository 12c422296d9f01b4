"""Tier 3: SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers' own load of the same file."""

from __future__ import annotations

import numpy as np
import pytest

from causal_parity import gguf_reference, kl_divergence, ref_cache_dir

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "Name three colours."]


@pytest.fixture(scope="module")
def smollm(request, tmp_path_factory):
    from linalign import assets
    from linalign.checkpoints.gguf import read_gguf
    from linalign.models import llama

    path = assets.path("smollm2-135m-instruct")
    cfg, tensors, tok = read_gguf(path)
    config = llama.Config.from_hf_config(cfg)
    params = llama.convert_params(tensors, config)
    ref = gguf_reference(ref_cache_dir(request, tmp_path_factory), path, PROMPTS, chat=True)
    return config, llama.Model(config), params, tok, ref


def _ids(tok, prompt):
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]), add_special_tokens=False)


def test_config_read_from_gguf(smollm):
    config = smollm[0]
    assert (config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads) == (576, 30, 9, 3)
    assert config.vocab_size == 49152 and config.tie_word_embeddings and config.rope.theta == 100000.0


def test_tokenizer_and_hidden_states_match_transformers(smollm):
    import jax.numpy as jnp

    config, model, params, tok, ref = smollm
    rows = [_ids(tok, p) for p in PROMPTS]
    for i, ids in enumerate(rows):
        np.testing.assert_array_equal(ids, ref[f"ids_{i}"])
    # One left-padded batch: padding must not change any row's states.
    t = max(map(len, rows))
    ids = np.zeros((len(rows), t), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    out = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    for i, r in enumerate(rows):
        h = np.asarray(out.last_hidden_state[i, t - len(r):])
        np.testing.assert_allclose(h, ref[f"hidden_{i}"], atol=1e-2, rtol=1e-2)
        kl = kl_divergence(ref[f"logits_{i}"], np.asarray(out.logits[i, -1]))
        assert kl <= 1e-4, f"prompt {i}: next-token KL {kl:.2e}"


def test_greedy_generation_matches_transformers(smollm):
    from linalign.generate import decode

    config, model, params, tok, ref = smollm
    enc = tok.encode_batch([tok.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS],
                           add_special_tokens=False, padding_side="left")
    gen = decode.Decoder(model, params).generate(enc.ids, enc.mask, max_new_tokens=20, eos_ids=(tok.eos_id,),
                                                 pad_id=tok.pad_id)
    for i, row in enumerate(gen.rows()):
        np.testing.assert_array_equal(row, ref[f"gen_{i}"][: len(row)], err_msg=PROMPTS[i])
    assert tok.decode(gen.rows()[0]).strip() == "The capital of France is Paris."
