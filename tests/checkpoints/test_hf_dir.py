"""Hugging Face directory reading: sharded weights, sentence-transformers layout, bad inputs."""

import json
import shutil
import sys
import pathlib

import numpy as np
import pytest

from linalign import checkpoints
from linalign.checkpoints import hf_dir
from linalign.models.base import CheckpointError, UnsupportedConfigError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
from encoder_parity import random_batch, tiny_model_dir, torch_hidden_states  # noqa: E402


@pytest.fixture
def bert_dir(tmp_path):
    d, ref = tiny_model_dir(tmp_path, "bert")
    return d, ref


def _load(d, tmp_path):
    return checkpoints.load(d, cache=False, cache_root=tmp_path / "cache")


def test_sharded_checkpoint_loads_like_single_file(tmp_path, bert_dir):
    d, ref = bert_dir
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, safe_serialization=True, max_shard_size="30KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(d / f, sharded / f)
    assert (sharded / hf_dir.INDEX).exists() and len(hf_dir.inspect(sharded).weight_files) > 2
    ids, mask = random_batch(2, 9, 101, 0, [9, 5])
    a = np.asarray(_load(sharded, tmp_path)(ids, mask).last_hidden_state)
    b = np.asarray(_load(d, tmp_path)(ids, mask).last_hidden_state)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, torch_hidden_states(ref, ids, mask)[-1], atol=1e-4, rtol=1e-4)
    # A shard named by the index but absent -> error naming it.
    victim = hf_dir.inspect(sharded).weight_files[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim.name} is missing"):
        _load(sharded, tmp_path)


def test_truncated_and_corrupt_safetensors(tmp_path, bert_dir):
    d, _ = bert_dir
    w = d / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        _load(d, tmp_path)
    w.write_bytes(raw[:4])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        _load(d, tmp_path)
    w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + raw[24:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        _load(d, tmp_path)


def test_missing_files(tmp_path, bert_dir):
    d, _ = bert_dir
    (d / "config.json").rename(d / "config.bak")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        _load(d, tmp_path)
    (d / "config.bak").rename(d / "config.json")
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        _load(d, tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"neither model.safetensors.*found \['pytorch_model.bin'\]"):
        _load(d, tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "nope" / "model", cache=False)


def test_unknown_architecture_and_attribute(tmp_path, bert_dir):
    d, _ = bert_dir
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="t5")))
    with pytest.raises(UnsupportedConfigError, match=r"'t5'.*supported: bert, gemma3"):
        _load(d, tmp_path)
    (d / "config.json").write_text(json.dumps(dict(cfg, use_fancy_attention=True)))
    with pytest.raises(UnsupportedConfigError, match="use_fancy_attention"):
        _load(d, tmp_path)
    (d / "config.json").write_text(json.dumps(dict(cfg, hidden_size=48, num_attention_heads=4)))
    with pytest.raises(CheckpointError, match=r"tiny_bert: bert tensor 'embeddings.word_embeddings.weight' has shape \(101, 32\), config implies \(101, 48\)"):
        _load(d, tmp_path)


def test_unexpected_tensors_refused(tmp_path, bert_dir):
    d, ref = bert_dir
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    t["encoder.layer.0.attention.self.distance_embedding.weight"] = np.zeros((3, 32), np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not use.*distance_embedding"):
        _load(d, tmp_path)


def test_sentence_transformers_layout(tmp_path, bert_dir):
    d, _ = bert_dir
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 17}))
    info = hf_dir.inspect(d)
    assert (info.default_pooling, info.max_seq_length, info.normalize) == ("first", 17, True)
    m = _load(d, tmp_path)
    assert m.default_pooling == "first" and m.tokenizer.model_max_length == 17
    # Without the sentence-transformers files an encoder defaults to mean pooling.
    for f in ("modules.json", "sentence_bert_config.json"):
        (d / f).unlink()
    shutil.rmtree(d / "1_Pooling")
    assert _load(d, tmp_path).default_pooling == "mean"
