"""GGUF reader: tiny transformers models written in llama.cpp layout load to identical params."""

from __future__ import annotations

import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from linalign.checkpoints import gguf as gguf_ckpt
from linalign.models import llama
from linalign.models.base import CheckpointError, UnsupportedConfigError

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "models"))
from causal_parity import save_tiny  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

_TO_GGUF = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "post_feedforward_layernorm": "post_ffw_norm",
}


def gguf_name(hf_name: str, arch: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    i, part, kind = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name).groups()
    if part == "post_attention_layernorm":
        g = "post_attention_norm" if arch == "gemma3" else "ffn_norm"
    elif part == "pre_feedforward_layernorm":
        g = "ffn_norm"
    else:
        g = _TO_GGUF[part]
    return f"blk.{i}.{g}.{kind}"


def write_gguf(path, arch: str, cfg: dict, tensors: dict, quant=None):
    """Writes HF tensors as llama.cpp does: q/k rows permuted for Llama, Gemma norms stored as 1 + w."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if arch == "gemma3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(cfg["sliding_window"])
        w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    else:
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    for name, t in tensors.items():
        t = np.asarray(t, np.float32)
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = gguf_ckpt.permute_qk(t, cfg["num_attention_heads"])
        if arch == "llama" and name.endswith("k_proj.weight"):
            t = gguf_ckpt.permute_qk(t, cfg["num_key_value_heads"])
        if arch == "gemma3" and name.endswith("norm.weight"):
            t = t + 1.0
        if quant is not None and t.ndim == 2:
            w.add_tensor(gguf_name(name, arch), gguf.quants.quantize(t, quant), raw_dtype=quant)
        else:
            w.add_tensor(gguf_name(name, arch), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama(tmp_path, tied=False, n_kv=2):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv, max_position_embeddings=128, tie_word_embeddings=tied,
        rope_theta=50000.0)).eval()
    return save_tiny(hf, tmp_path / "hf")


@pytest.mark.parametrize("tied,n_kv", [(False, 2), (True, 1), (False, 4)])
def test_gguf_and_safetensors_give_identical_params(tmp_path, tied, n_kv):
    cfg, tensors = tiny_llama(tmp_path, tied, n_kv)
    write_gguf(tmp_path / "m.gguf", "llama", cfg, tensors)
    g_cfg, g_tensors, tok = gguf_ckpt.read_gguf(tmp_path / "m.gguf", with_tokenizer=False)
    assert tok is None
    assert g_cfg["tie_word_embeddings"] == tied
    assert set(g_tensors) == set(tensors)
    c_st, c_gg = llama.Config.from_hf_config(cfg), llama.Config.from_hf_config(g_cfg)
    for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "rope",
              "tie_word_embeddings", "intermediate_size", "max_position_embeddings"):
        assert getattr(c_st, f) == getattr(c_gg, f), f
    np.testing.assert_allclose(c_gg.rms_norm_eps, c_st.rms_norm_eps, rtol=1e-6, atol=0)
    p_st, p_gg = llama.convert_params(tensors, c_st), llama.convert_params(g_tensors, c_gg)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(p_st), jax.tree_util.tree_leaves_with_path(p_gg)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


def test_quantized_tensors_dequantize_close(tmp_path):
    cfg, tensors = tiny_llama(tmp_path)
    write_gguf(tmp_path / "q.gguf", "llama", cfg, tensors, quant=gguf.GGMLQuantizationType.Q8_0)
    _, g_tensors, _ = gguf_ckpt.read_gguf(tmp_path / "q.gguf", with_tokenizer=False)
    for name, ref in tensors.items():
        # Q8_0: 8-bit blocks of 32 with a float16 scale; error at most half a step of max|w|/127.
        step = np.abs(ref).max() / 127.0
        np.testing.assert_allclose(g_tensors[name], ref, atol=float(step), rtol=0, err_msg=name)


def test_unpermute_inverts_permute():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    np.testing.assert_array_equal(gguf_ckpt.unpermute_qk(gguf_ckpt.permute_qk(w, 6), 6), w)
    assert not np.array_equal(gguf_ckpt.permute_qk(w, 6), w)


def test_truncated_and_missing_files_raise(tmp_path):
    cfg, tensors = tiny_llama(tmp_path)
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", cfg, tensors)
    data = path.read_bytes()
    for cut in (len(data) - 1000, len(data) // 2, 64, 3):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="GGUF"):
            gguf_ckpt.read_gguf(bad, with_tokenizer=False)
    with pytest.raises(CheckpointError, match="not found"):
        gguf_ckpt.read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(CheckpointError, match="tokenizer"):
        gguf_ckpt.read_gguf(path, with_tokenizer=True)


def test_unknown_architecture_is_refused(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "rwkv6")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedConfigError, match="rwkv6"):
        gguf_ckpt.read_gguf(tmp_path / "x.gguf", with_tokenizer=False)


def test_gemma3_gguf_norm_offset_and_config(tmp_path):
    from linalign.models import gemma3

    torch.manual_seed(0)
    hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
        max_position_embeddings=128)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    cfg, tensors = save_tiny(hf, tmp_path / "hf")
    write_gguf(tmp_path / "g.gguf", "gemma3", cfg, tensors)
    g_cfg, g_tensors, _ = gguf_ckpt.read_gguf(tmp_path / "g.gguf", with_tokenizer=False)
    c_st, c_gg = gemma3.Config.from_hf_config(cfg), gemma3.Config.from_hf_config(g_cfg)
    assert c_gg.sliding_windows == c_st.sliding_windows == (8, 8, 8, 8, 8, None)
    assert (c_gg.rope_global, c_gg.rope_local) == (c_st.rope_global, c_st.rope_local)
    assert c_gg.query_pre_attn_scalar == c_st.query_pre_attn_scalar
    for name, ref in tensors.items():
        # Norms went through +1 on write and -1 on read in float32: equal to rounding.
        np.testing.assert_allclose(g_tensors[name], ref, rtol=0, atol=1e-7, err_msg=name)


def test_llama3_rope_freqs_tensor_becomes_llama3_rope(tmp_path):
    """llama.cpp stores Llama 3.1 scaling as a rope_freqs tensor; the reader folds it into the config."""
    import math

    torch.manual_seed(0)
    rope = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192, rope_theta=500000.0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=131072, rope_parameters=rope)).eval()
    cfg, tensors = save_tiny(hf, tmp_path / "hf")
    # llama.cpp's convert_hf_to_gguf formula for the stored factors.
    freqs = 1.0 / (500000.0 ** (np.arange(0, 128, 2) / 128))
    factors = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4.0:
            factors.append(1.0)
        elif wavelen > 8192 / 1.0:
            factors.append(32.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / 32.0 + smooth))
    assert len(set(np.round(factors, 3))) > 3  # all three regimes present
    path = tmp_path / "l3.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for fn, v in (("add_block_count", 1), ("add_context_length", 131072), ("add_embedding_length", 256),
                  ("add_feed_forward_length", 64), ("add_head_count", 2), ("add_head_count_kv", 1),
                  ("add_layer_norm_rms_eps", cfg["rms_norm_eps"]), ("add_vocab_size", 64),
                  ("add_rope_dimension_count", 128), ("add_rope_freq_base", 500000.0)):
        getattr(w, fn)(v)
    w.add_tensor("rope_freqs.weight", np.asarray(factors, np.float32))
    for name, t in tensors.items():
        t = np.asarray(t, np.float32)
        if name.endswith("q_proj.weight"):
            t = gguf_ckpt.permute_qk(t, 2)
        if name.endswith("k_proj.weight"):
            t = gguf_ckpt.permute_qk(t, 1)
        w.add_tensor(gguf_name(name, "llama"), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g_cfg, g_tensors, _ = gguf_ckpt.read_gguf(path, with_tokenizer=False)
    assert llama.Config.from_hf_config(g_cfg).rope == llama.Config.from_hf_config(cfg).rope
    assert set(g_tensors) == set(tensors)
