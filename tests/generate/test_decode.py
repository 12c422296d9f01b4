"""KV-cached decoding vs transformers' generate on tiny random models; sampling filters."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linalign.generate import decode
from linalign.models import gemma3, llama

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "models"))
from causal_parity import padded_batch, save_tiny  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny(kind, tmp_path):
    torch.manual_seed(1)
    if kind == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, eos_token_id=5, bos_token_id=1,
            pad_token_id=0)).eval()
        mod = llama
    else:
        hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, sliding_window=6, sliding_window_pattern=3,
            max_position_embeddings=256, eos_token_id=5, pad_token_id=0)).eval()
        mod = gemma3
    # Sharper logits than init gives, so greedy choices are not near-ties.
    with torch.no_grad():
        hf.get_output_embeddings().weight.mul_(8.0)
    cfg_dict, tensors = save_tiny(hf, tmp_path / kind)
    cfg = mod.Config.from_hf_config(cfg_dict)
    return hf, mod.Model(cfg), mod.convert_params(tensors, cfg)


@pytest.mark.slow  # ~25 s each on two shared cores (compiling the decode loop, transformers generate)
@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_greedy_matches_transformers_generate_left_padded_batch(kind, tmp_path):
    hf, module, params = tiny(kind, tmp_path)
    ids, mask, _ = padded_batch(128, [9, 4, 6], 9, "left", seed=2)
    ids = np.where(mask > 0, np.maximum(ids, 6), 0)  # keep EOS out of the prompts
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                          do_sample=False, eos_token_id=5, pad_token_id=0).numpy()[:, ids.shape[1]:]
    gen = decode.Decoder(module, params).generate(ids, mask, max_new_tokens=12, eos_ids=(5,), pad_id=0)
    for i, row in enumerate(gen.rows()):
        np.testing.assert_array_equal(np.asarray(row), ref[i, : len(row)], err_msg=f"row {i}")
        if not gen.finished[i]:
            assert len(row) == 12


def test_right_padded_prompts_give_same_tokens_as_left(tmp_path):
    _, module, params = tiny("llama", tmp_path)
    dec = decode.Decoder(module, params)
    ids_l, mask_l, _ = padded_batch(128, [7, 3], 7, "left", seed=4)
    ids_r = np.zeros_like(ids_l)
    mask_r = np.zeros_like(mask_l)
    for i in range(2):
        row = ids_l[i][mask_l[i] > 0]
        ids_r[i, : len(row)], mask_r[i, : len(row)] = row, 1
    a = dec.generate(ids_l, mask_l, max_new_tokens=8)
    b = dec.generate(ids_r, mask_r, max_new_tokens=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # One-row decoding agrees with the batched result (padding does not leak into attention).
    c = dec.generate(ids_l[1:, -3:], mask_l[1:, -3:], max_new_tokens=8)
    np.testing.assert_array_equal(c.tokens[0], a.tokens[1])


def test_eos_stops_and_pads(tmp_path):
    _, module, params = tiny("llama", tmp_path)
    dec = decode.Decoder(module, params)
    ids = np.array([[7, 8, 9, 10]])
    free = dec.generate(ids, max_new_tokens=6)
    eos = int(free.tokens[0, 2])  # pretend the third generated token is EOS
    gen = dec.generate(ids, max_new_tokens=6, eos_ids=(eos,), pad_id=0)
    first = int(np.argmax(free.tokens[0] == eos))
    assert gen.finished[0] and gen.lengths[0] == first + 1
    np.testing.assert_array_equal(gen.tokens[0, first + 1:], 0)


def test_select_token_filters():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0, -1.0]] * 4000)
    rng = jax.random.PRNGKey(0)
    greedy = decode.select_token(logits, rng, decode.GREEDY)
    assert set(np.asarray(greedy).tolist()) == {1}
    top2 = np.asarray(decode.select_token(logits, rng, decode.Sampling(temperature=1.0, top_k=2)))
    assert set(top2.tolist()) <= {1, 3}
    # Frequencies follow softmax over the two kept logits: p(1) = 1 / (1 + e^-1) = 0.731.
    np.testing.assert_allclose((top2 == 1).mean(), 1 / (1 + np.exp(-1.0)), atol=0.03, rtol=0)
    # top_p = 0.5: the top token alone has p = 0.64 >= 0.5, so it is the only one kept.
    top_p = np.asarray(decode.select_token(logits, rng, decode.Sampling(temperature=1.0, top_p=0.5)))
    assert set(top_p.tolist()) == {1}
    # Temperature 2 with no filter: empirical frequencies match softmax(logits / 2).
    t2 = np.asarray(decode.select_token(logits, rng, decode.Sampling(temperature=2.0)))
    expect = np.exp(np.asarray(logits[0]) / 2) / np.exp(np.asarray(logits[0]) / 2).sum()
    np.testing.assert_allclose(np.bincount(t2, minlength=5) / len(t2), expect, atol=0.03, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        decode.Sampling(temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        decode.Sampling(temperature=-1.0)
    assert decode.bucket(1) == 16 and decode.bucket(17) == 32 and decode.bucket(32) == 32


def test_prompt_errors(tmp_path):
    _, module, params = tiny("llama", tmp_path)
    dec = decode.Decoder(module, params)
    with pytest.raises(ValueError, match="vocabulary"):
        dec.generate(np.array([[1, 500]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        dec.generate(np.array([[1, 2]]), np.array([[0, 0]]), max_new_tokens=2)
