"""Tier-2 parity: tiny random Llama / Mistral / Qwen2 / Qwen3 from transformers vs the Flax port."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linalign.models import llama
from linalign.models.base import CheckpointError, UnsupportedConfigError

from causal_parity import assert_parity, hf_forward, padded_batch, save_tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              max_position_embeddings=256, attn_implementation="eager")

CASES = {
    "llama_gqa_untied": ("LlamaConfig", "LlamaForCausalLM",
                         dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama_mha_tied": ("LlamaConfig", "LlamaForCausalLM",
                       dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama_mqa_llama3rope": ("LlamaConfig", "LlamaForCausalLM",
                             dict(num_attention_heads=4, num_key_value_heads=1, rope_scaling=dict(
                                 rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=16))),
    "llama_linear_rope": ("LlamaConfig", "LlamaForCausalLM",
                          dict(num_attention_heads=4, num_key_value_heads=2,
                               rope_scaling=dict(rope_type="linear", factor=2.0))),
    "llama_attn_mlp_bias": ("LlamaConfig", "LlamaForCausalLM",
                            dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    # Sliding window (4) shorter than the batch (11) so the window changes the result.
    "mistral_window4": ("MistralConfig", "MistralForCausalLM",
                        dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                             tie_word_embeddings=False)),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3_qknorm": ("Qwen3Config", "Qwen3ForCausalLM",
                     dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
}


def build(case, tmp_path, seed=0):
    cfg_cls, model_cls, extra = CASES[case]
    torch.manual_seed(seed)
    hf_cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
    hf = getattr(transformers, model_cls)(hf_cfg).eval()
    # Random norm weights so a wrong norm convention cannot hide behind all-ones weights.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    cfg_dict, tensors = save_tiny(hf, tmp_path / case)
    return hf, cfg_dict, tensors


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_hidden_states_and_logits_match_transformers(case, side, tmp_path):
    hf, cfg_dict, tensors = build(case, tmp_path)
    cfg = llama.Config.from_hf_config(cfg_dict)
    if case.startswith("mistral"):
        assert cfg.sliding_windows == (4, 4)
    params = llama.convert_params(tensors, cfg)
    ids, mask, pos = padded_batch(cfg.vocab_size, [11, 7, 3], 11, side)
    ref_hidden, ref_logits = hf_forward(hf, ids, mask, pos)
    model = llama.Model(cfg)
    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, output_hidden_states=True))(
        params, jnp.asarray(ids), jnp.asarray(mask))
    assert len(out.hidden_states) == cfg.num_layers + 1
    assert_parity(out, ref_hidden, ref_logits, mask, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama_gqa_untied", "qwen3_qknorm"])
def test_kv_cache_decoding_matches_full_forward(case, tmp_path):
    """Prefill a left-padded batch, then feed tokens one at a time: same logits as one pass."""
    _, cfg_dict, tensors = build(case, tmp_path)
    cfg = llama.Config.from_hf_config(cfg_dict)
    params = llama.convert_params(tensors, cfg)
    model = llama.Model(cfg)
    ids, mask, _ = padded_batch(cfg.vocab_size, [9, 5], 9, "left", seed=1)
    full = model.apply({"params": params}, ids, mask).logits
    cache = llama.new_cache(cfg, batch=2, max_len=16)
    out, cache = model.apply({"params": params}, ids[:, :6], mask[:, :6], cache=cache)
    np.testing.assert_allclose(np.asarray(out.logits)[mask[:, :6] > 0], np.asarray(full)[:, :6][mask[:, :6] > 0],
                               atol=1e-4, rtol=1e-4)
    step = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, cache=c))
    for t in range(6, 9):
        out, cache = step(params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        np.testing.assert_allclose(np.asarray(out.logits)[:, 0], np.asarray(full)[:, t], atol=1e-4, rtol=1e-4)
    assert int(cache.index) == 9
    np.testing.assert_array_equal(np.asarray(cache.seen_b), [9, 5])


def test_lm_head_on_arbitrary_hidden_states(tmp_path):
    _, cfg_dict, tensors = build("llama_gqa_untied", tmp_path)
    cfg = llama.Config.from_hf_config(cfg_dict)
    params = llama.convert_params(tensors, cfg)
    model = llama.Model(cfg)
    ids, mask, _ = padded_batch(cfg.vocab_size, [6], 6, "right")
    out = model.apply({"params": params}, ids, mask)
    logits = model.apply({"params": params}, out.last_hidden_state, method=llama.Model.lm_head)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(out.logits), atol=1e-6, rtol=1e-6)


def test_bfloat16_params_with_float32_activations(tmp_path):
    hf, cfg_dict, tensors = build("llama_gqa_untied", tmp_path)
    cfg = llama.Config.from_hf_config(cfg_dict)
    p32 = llama.convert_params(tensors, cfg)
    p16 = llama.convert_params(tensors, cfg, dtype=jnp.bfloat16)
    assert p16["layers_0"]["self_attn"]["q_proj"]["kernel"].dtype == jnp.bfloat16
    ids, mask, _ = padded_batch(cfg.vocab_size, [8], 8, "right")
    a = llama.Model(cfg).apply({"params": p32}, ids, mask).logits
    b = llama.Model(cfg, dtype=jnp.float32).apply({"params": p16}, ids, mask).logits
    assert b.dtype == jnp.float32
    # bf16 weight rounding (8 bits of mantissa) on a tiny random model.
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-2, rtol=5e-2)


def test_unknown_config_attribute_is_refused(tmp_path):
    _, cfg_dict, _ = build("llama_gqa_untied", tmp_path)
    with pytest.raises(UnsupportedConfigError, match="frobnicate"):
        llama.Config.from_hf_config(dict(cfg_dict, frobnicate=3))
    with pytest.raises(UnsupportedConfigError, match="longrope"):
        llama.Config.from_hf_config(dict(cfg_dict, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}))
    with pytest.raises(UnsupportedConfigError, match="model_type"):
        llama.Config.from_hf_config(dict(cfg_dict, model_type="gpt2"))


def test_bad_tensors_are_refused(tmp_path):
    _, cfg_dict, tensors = build("llama_gqa_untied", tmp_path)
    cfg = llama.Config.from_hf_config(cfg_dict)
    broken = dict(tensors)
    broken["model.layers.0.self_attn.q_proj.weight"] = broken["model.layers.0.self_attn.q_proj.weight"][:-1]
    with pytest.raises(CheckpointError, match=r"q_proj.weight' has shape \(63, 64\), config implies \(64, 64\)"):
        llama.convert_params(broken, cfg)
    missing = {k: v for k, v in tensors.items() if "down_proj" not in k}
    with pytest.raises(CheckpointError, match="lacks"):
        llama.convert_params(missing, cfg)
    with pytest.raises(CheckpointError, match="does not use"):
        llama.convert_params(dict(tensors, **{"model.extra.weight": np.zeros(3)}), cfg)
