"""Tier-2 parity: tiny random Gemma3ForCausalLM (text-only) from transformers vs the Flax port."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linalign.models import gemma3
from linalign.models.base import UnsupportedConfigError

from causal_parity import assert_parity, hf_forward, padded_batch, save_tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CASES = {
    # 3 sliding + 1 global layer, a window shorter than the batch so the window matters.
    "gqa_window4": dict(num_attention_heads=4, num_key_value_heads=2,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]),
    "mqa_softcap_untied": dict(num_attention_heads=2, num_key_value_heads=1, final_logit_softcapping=3.0,
                               attn_logit_softcapping=5.0, tie_word_embeddings=False, query_pre_attn_scalar=24),
    "mha_linear_global_rope": dict(num_attention_heads=2, num_key_value_heads=2,
                                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                       "rope_theta": 1e6},
                                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}


def build(case, tmp_path, hidden_size=64):
    torch.manual_seed(0)
    kw = dict(vocab_size=128, hidden_size=hidden_size, intermediate_size=96, num_hidden_layers=4, head_dim=16,
              sliding_window=4, max_position_embeddings=256, attn_implementation="eager")
    kw.update(CASES[case])
    if "layer_types" not in kw:
        kw["sliding_window_pattern"] = 2
    hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**kw)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)  # Gemma norms are stored around 0 (used as 1 + w)
    return (hf,) + save_tiny(hf, tmp_path / case)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.filterwarnings("ignore:gemma3. attn_logit_softcapping")
def test_gemma3_matches_transformers(case, side, tmp_path):
    hf, cfg_dict, tensors = build(case, tmp_path)
    cfg = gemma3.Config.from_hf_config(cfg_dict)
    assert any(w is None for w in cfg.sliding_windows) and any(w == 4 for w in cfg.sliding_windows)
    params = gemma3.convert_params(tensors, cfg)
    ids, mask, pos = padded_batch(cfg.vocab_size, [11, 8, 2], 11, side)
    ref_hidden, ref_logits = hf_forward(hf, ids, mask, pos)
    model = gemma3.Model(cfg)
    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, output_hidden_states=True))(params, ids, mask)
    assert_parity(out, ref_hidden, ref_logits, mask, atol=1e-4, rtol=1e-4)


def test_gemma3_cache_decoding_matches_full_forward(tmp_path):
    _, cfg_dict, tensors = build("gqa_window4", tmp_path)
    cfg = gemma3.Config.from_hf_config(cfg_dict)
    params = gemma3.convert_params(tensors, cfg)
    model = gemma3.Model(cfg)
    ids, mask, _ = padded_batch(cfg.vocab_size, [10, 6], 10, "left", seed=3)
    full = np.asarray(model.apply({"params": params}, ids, mask).logits)
    cache = gemma3.new_cache(cfg, batch=2, max_len=12)
    out, cache = model.apply({"params": params}, ids[:, :5], mask[:, :5], cache=cache)
    step = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, cache=c))
    for t in range(5, 10):
        out, cache = step(params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        np.testing.assert_allclose(np.asarray(out.logits)[:, 0], full[:, t], atol=1e-4, rtol=1e-4)


def test_gemma3_bf16_embeddings_scaled_like_transformers(tmp_path):
    """bf16 weights: the sqrt(hidden) scale is rounded to bf16 before multiplying, as in transformers."""
    hf, cfg_dict, tensors = build("gqa_window4", tmp_path, hidden_size=40)  # sqrt(40) is not exact in bf16
    cfg = gemma3.Config.from_hf_config(cfg_dict)
    params = gemma3.convert_params(tensors, cfg, dtype=jnp.bfloat16)
    ids, mask, pos = padded_batch(cfg.vocab_size, [7], 7, "right")
    hf16 = hf.to(torch.bfloat16)
    with torch.no_grad():
        ref = hf16(input_ids=torch.tensor(ids), output_hidden_states=True).hidden_states[0].float().numpy()
    out = gemma3.Model(cfg, dtype=jnp.bfloat16).apply({"params": params}, ids, mask, output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(out.hidden_states[0].astype(jnp.float32)), ref, rtol=0, atol=0)
    assert float(jnp.asarray(np.sqrt(640), jnp.bfloat16)) == 25.25  # Gemma-3-270M's rounded scale


def test_gemma3_refuses_unknown_attributes(tmp_path):
    _, cfg_dict, _ = build("gqa_window4", tmp_path)
    with pytest.raises(UnsupportedConfigError, match="mystery"):
        gemma3.Config.from_hf_config(dict(cfg_dict, mystery=1))
    with pytest.raises(UnsupportedConfigError, match="bidirectional"):
        gemma3.Config.from_hf_config(dict(cfg_dict, use_bidirectional_attention=True))
    with pytest.raises(UnsupportedConfigError, match="hidden_activation"):
        gemma3.Config.from_hf_config(dict(cfg_dict, hidden_activation="relu"))
