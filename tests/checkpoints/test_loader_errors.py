"""Malformed checkpoints built in tmp_path: each load fails with CheckpointError or
UnsupportedConfigError naming the file and the field, never a bare TypeError/KeyError/ZeroDivisionError."""

from __future__ import annotations

import json
import pathlib
import re
import struct
import sys

import numpy as np
import pytest

from linalign import checkpoints
from linalign.checkpoints import gguf as gguf_ckpt
from linalign.models import gemma3, llama
from linalign.models.base import CheckpointError, UnsupportedConfigError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from encoder_parity import tiny_model_dir, write_tiny_tokenizer  # noqa: E402

LLAMA_CFG = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
             "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}


def _load(path, tmp_path):
    return checkpoints.load(path, cache=False, cache_root=tmp_path / "cache")


def _write_safetensors(path: pathlib.Path, header: dict, data: bytes = b"\0" * 8) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _llama_dir(tmp_path, **overrides) -> pathlib.Path:
    """A Llama-family directory with a valid single-tensor safetensors file and a tokenizer."""
    d = tmp_path / "tiny_llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(LLAMA_CFG, **overrides)))
    _write_safetensors(d / "model.safetensors",
                       {"model.norm.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    write_tiny_tokenizer(d, 32, "bert")
    return d


@pytest.mark.parametrize("entry,field", [
    (5, r"entry 'w' is 5 \(int\), expected an object"),
    ({"dtype": "F32", "shape": [2]}, r"entry 'w' lacks field 'data_offsets'"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8]}, r"entry 'w': field 'data_offsets' is \[8\]"),
    ({"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}, r"entry 'w': field 'shape' is \['2'\]"),
])
def test_malformed_safetensors_header_entry(tmp_path, entry, field):
    d = _llama_dir(tmp_path)
    _write_safetensors(d / "model.safetensors", {"w": entry})
    with pytest.raises(CheckpointError, match=re.escape(str(d / "model.safetensors")) + ": safetensors header " + field):
        _load(d, tmp_path)


def test_safetensors_header_that_is_not_an_object(tmp_path):
    d = _llama_dir(tmp_path)
    _write_safetensors(d / "model.safetensors", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"model.safetensors: safetensors header is a JSON list"):
        _load(d, tmp_path)


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", "16", r"field 'hidden_size' is '16' \(str\); expected an integer"),
    ("num_attention_heads", 0, r"field 'num_attention_heads' is 0; expected at least 1"),
    ("num_key_value_heads", 0, r"field 'num_key_value_heads' is 0; expected at least 1"),
    ("num_hidden_layers", True, r"field 'num_hidden_layers' is True \(bool\); expected an integer"),
    ("rms_norm_eps", "1e-6", r"field 'rms_norm_eps' is '1e-6' \(str\); expected a number"),
    ("frobnicate", 3, r"does not handle config attribute\(s\) \['frobnicate'\]"),
])
def test_bad_llama_config_names_file_and_field(tmp_path, field, value, message):
    d = _llama_dir(tmp_path, **{field: value})
    with pytest.raises(UnsupportedConfigError, match=re.escape(str(d / "config.json")) + ": .*" + message):
        _load(d, tmp_path)


def test_llama_config_without_required_field(tmp_path):
    d = _llama_dir(tmp_path)
    cfg = dict(LLAMA_CFG)
    del cfg["intermediate_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match=r"config.json: llama \(llama\) config lacks required field "
                                                     r"'intermediate_size'"):
        _load(d, tmp_path)


def test_config_json_that_is_not_an_object(tmp_path):
    d = _llama_dir(tmp_path)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json holds a JSON list, not an object"):
        _load(d, tmp_path)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", "32", r"field 'hidden_size' is '32' \(str\)"),
    ("num_attention_heads", 0, r"field 'num_attention_heads' is 0; expected at least 1"),
    ("layer_norm_eps", -1.0, r"field 'layer_norm_eps' is -1.0; expected a positive number"),
    ("use_fancy_attention", True, r"\['use_fancy_attention'\]"),
])
def test_bad_encoder_config_names_file_and_field(tmp_path, kind, field, value, message):
    d, _ = tiny_model_dir(tmp_path, kind)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, **{field: value})))
    with pytest.raises(UnsupportedConfigError, match=re.escape(str(d / "config.json")) + f": {kind}.*" + message):
        _load(d, tmp_path)


def test_gemma3_config_field_errors():
    base = {"model_type": "gemma3_text", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    assert gemma3.Config.from_hf_config(base).num_heads == 2
    with pytest.raises(UnsupportedConfigError, match=r"gemma3 config field 'num_attention_heads' is 0"):
        gemma3.Config.from_hf_config(dict(base, num_attention_heads=0))
    with pytest.raises(UnsupportedConfigError, match=r"gemma3 config field 'hidden_size' is '16' \(str\)"):
        gemma3.Config.from_hf_config(dict(base, hidden_size="16"))
    with pytest.raises(UnsupportedConfigError, match=r"gemma3 config field 'sliding_window' is 2.5 \(float\)"):
        gemma3.Config.from_hf_config(dict(base, sliding_window=2.5))
    # Valid values are unchanged by the typed readers.
    c = llama.Config.from_hf_config(LLAMA_CFG)
    assert (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (16, 2, 1, 8)


def _gguf_with_head_count(path: pathlib.Path, head_count: int) -> None:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(16)
    w.add_feed_forward_length(24)
    w.add_head_count(head_count)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(32)
    w.add_tensor("output_norm.weight", np.ones(16, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_with_zero_heads_names_file_and_field(tmp_path):
    path = tmp_path / "zero_heads.gguf"
    _gguf_with_head_count(path, 0)
    msg = re.escape(str(path)) + r": GGUF metadata field 'llama.attention.head_count' is 0; expected an integer >= 1"
    with pytest.raises(CheckpointError, match=msg):
        gguf_ckpt.read_gguf(path, with_tokenizer=False)
    with pytest.raises(CheckpointError, match=msg):
        _load(path, tmp_path)
