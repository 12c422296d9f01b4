"""checkpoints.load: converted-model cache, dtype, device placement, name resolution."""

import pathlib
import sys
import time

import jax
import numpy as np
import pytest

from linalign import checkpoints
from linalign.checkpoints import cache as cache_lib
from linalign.models.base import CheckpointError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
from encoder_parity import random_batch, tiny_model_dir  # noqa: E402


def _flat(params):
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_cache_round_trip_and_invalidation(tmp_path, kind):
    d, _ = tiny_model_dir(tmp_path, kind)
    root = tmp_path / "cache"
    first = checkpoints.load(d, cache_root=root)
    entries = list(cache_lib.cache_dir(root).iterdir())
    assert len(entries) == 1 and (entries[0] / "params.safetensors").exists()
    second = checkpoints.load(d, cache_root=root)
    a, b = _flat(first.params), _flat(second.params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert second.fingerprint == first.fingerprint
    assert second.tokenizer.encode("w1 w2") == first.tokenizer.encode("w1 w2")
    assert second.default_pooling == first.default_pooling
    # Rewriting the weights (new mtime/size) must miss the cache and pick up the new values.
    from safetensors.numpy import load_file, save_file
    t = load_file(str(d / "model.safetensors"))
    t["embeddings.LayerNorm.bias"] = t["embeddings.LayerNorm.bias"] + 1.0
    time.sleep(0.01)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    third = checkpoints.load(d, cache_root=root)
    assert third.fingerprint != first.fingerprint
    np.testing.assert_allclose(np.asarray(third.params["embeddings_ln"]["bias"]),
                               a["embeddings_ln/bias"] + 1.0, atol=1e-6, rtol=0)
    assert len(list(cache_lib.cache_dir(root).iterdir())) == 2


def test_corrupt_cache_entry_is_ignored(tmp_path):
    d, _ = tiny_model_dir(tmp_path, "bert")
    root = tmp_path / "cache"
    ref = checkpoints.load(d, cache_root=root)
    (entry,) = list(cache_lib.cache_dir(root).iterdir())
    (entry / "params.safetensors").write_bytes(b"garbage")
    again = checkpoints.load(d, cache_root=root)
    np.testing.assert_array_equal(np.asarray(again.params["word_embeddings"]),
                                  np.asarray(ref.params["word_embeddings"]))


def test_dtype_and_mesh_placement(tmp_path):
    d, _ = tiny_model_dir(tmp_path, "bert")
    root = tmp_path / "cache"
    ids, mask = random_batch(2, 8, 101, 0, [8, 3])
    f32 = checkpoints.load(d, cache_root=root)
    bf16 = checkpoints.load(d, dtype="bfloat16", cache_root=root)
    assert bf16.params["word_embeddings"].dtype == np.dtype("bfloat16")
    h32 = np.asarray(f32(ids, mask).last_hidden_state)
    h16 = np.asarray(bf16(ids, mask).last_hidden_state, dtype=np.float32)
    np.testing.assert_allclose(h16, h32, atol=0.1, rtol=0.1)
    mesh = jax.make_mesh((8,), ("data",))
    rep = checkpoints.load(d, mesh=mesh, cache_root=root)
    assert rep.params["word_embeddings"].sharding.is_fully_replicated
    split = checkpoints.load(d, mesh=mesh, shard_axis="data", cache_root=root)
    w = split.params["layer_0"]["up_df"]  # [32, 48]: 48 is the larger, divisible dimension
    assert w.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    np.testing.assert_allclose(np.asarray(split(ids, mask).last_hidden_state), h32, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="dtype must be one of"):
        checkpoints.load(d, dtype="int8", cache_root=root)


def test_config_hash_is_one_function(tmp_path):
    import dataclasses

    from linalign import extract
    from linalign.models import bert

    assert extract.config_hash is checkpoints.config_hash
    d, _ = tiny_model_dir(tmp_path, "bert")
    cfg = checkpoints.load(d, cache=False).config
    h = checkpoints.config_hash(cfg)
    assert h == checkpoints.config_hash(dataclasses.asdict(cfg)) and len(h) == 64
    assert h != checkpoints.config_hash(dataclasses.replace(cfg, num_layers=cfg.num_layers + 1))
    assert isinstance(cfg, bert.Config)


def test_unknown_asset_name():
    with pytest.raises(CheckpointError, match="neither an existing path nor a usable asset"):
        checkpoints.load("no-such-model-anywhere", cache=False)


@pytest.mark.slow
def test_real_cache_speedup(tmp_path):
    """First load converts, second reads the cache; both load the same params."""
    root = tmp_path / "cache"
    t0 = time.perf_counter()
    a = checkpoints.load("all-mpnet-base-v2", cache_root=root)
    t1 = time.perf_counter()
    b = checkpoints.load("all-mpnet-base-v2", cache_root=root)
    t2 = time.perf_counter()
    print(f"all-mpnet-base-v2 load: first {t1 - t0:.2f}s, cached {t2 - t1:.2f}s")
    np.testing.assert_array_equal(np.asarray(a.params["layer_11"]["q_dnh"]),
                                  np.asarray(b.params["layer_11"]["q_dnh"]))
    assert t2 - t1 < 30.0
