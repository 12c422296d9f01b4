"""Extraction pipeline: equals the plain forward pass, order, resume, per-token offsets, mesh."""

import pathlib
import sys

import jax
import numpy as np
import pytest

from linalign import checkpoints, extract
from linalign.extract import pipeline
from linalign.models import base
from linalign.models.tokenizer import TruncationError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
from encoder_parity import tiny_model_dir  # noqa: E402

RNG = np.random.default_rng(0)
# Mixed lengths (1 to 60 words) so several buckets and a truncated tail are exercised.
TEXTS = [" ".join(f"w{RNG.integers(0, 90)}" for _ in range(RNG.integers(1, 61))) for _ in range(45)]


_MODELS = {}


def _tiny(kind, tmp_path_factory):
    # One LoadedModel per kind for the whole module, so jit compilations are shared by tests.
    if kind not in _MODELS:
        tmp = tmp_path_factory.mktemp(kind)
        d, _ = tiny_model_dir(tmp, kind)
        _MODELS[kind] = checkpoints.load(d, cache_root=tmp / "cache")
    return _MODELS[kind]


@pytest.fixture(params=["bert", "mpnet"])
def model(request, tmp_path_factory):
    return _tiny(request.param, tmp_path_factory)


@pytest.fixture
def bert_model(tmp_path_factory):
    return _tiny("bert", tmp_path_factory)


def _direct(model, texts, max_length):
    """All texts in one batch padded to ``max_length`` (no bucketing, no sorting), pooled in
    numpy: the reference. Returns {pooling: [N, D]}."""
    enc = model.tokenizer.encode_batch(texts, max_length=max_length, truncation="silent",
                                       pad_to=max_length)
    h = np.asarray(jax.jit(model.__call__)(enc.ids, enc.mask).last_hidden_state, np.float64)
    m = enc.mask.astype(bool)
    n = enc.lengths
    return {"mean": np.stack([h[i, m[i]].mean(0) for i in range(len(texts))]),
            "first": h[:, 0], "last": h[np.arange(len(texts)), n - 1]}


def test_bucket_lengths():
    assert pipeline.bucket_lengths(512) == [16, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    assert pipeline.bucket_lengths(40) == [16, 32, 40]
    assert pipeline.bucket_lengths(256) == [16, 32, 48, 64, 96, 128, 192, 256]


def test_matches_padded_forward_in_original_order(model):
    want = _direct(model, TEXTS, 40)
    for pooling in base.POOLINGS:
        got = extract.extract(model, TEXTS, pooling=pooling, max_length=40, batch_size=4,
                              shard_rows=16, truncation="silent", progress=False)
        assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[pooling], atol=1e-5, rtol=1e-5,
                                   err_msg=pooling)


def test_truncation_policy(bert_model):
    model = bert_model
    with pytest.warns(UserWarning, match="exceed max_length=40"):
        extract.extract(model, TEXTS[:10], max_length=40, batch_size=4, progress=False)
    with pytest.raises(TruncationError, match="max_length=40"):
        extract.extract(model, TEXTS, max_length=40, truncation="error", progress=False)


def test_store_manifest_and_resume_after_interruption(bert_model, tmp_path):
    model = bert_model
    kw = dict(pooling="mean", max_length=40, batch_size=4, shard_rows=8, truncation="silent",
              progress=False)
    full = extract.extract(model, TEXTS, out_dir=tmp_path / "full", **kw)
    assert full.complete and full.num_rows == len(TEXTS) and len(full.manifest["shards"]) == 6
    m = full.manifest
    assert m["model"] == model.name and m["model_fingerprint"] == model.fingerprint
    assert m["text_fingerprint"] == extract.text_fingerprint(TEXTS) and m["pooling"] == "mean"
    assert m["config_hash"] == extract.config_hash(model.config) and m["tokenizer"] == model.tokenizer.name

    class Stop(Exception):
        pass

    def stop_after_two(i, rows):
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        extract.extract(model, TEXTS, out_dir=tmp_path / "part", on_shard=stop_after_two, **kw)
    part = extract.open_store(tmp_path / "part", require_complete=False)
    assert part.num_rows == 16 and not part.complete
    with pytest.raises(extract.StoreError, match="incomplete"):
        extract.open_store(tmp_path / "part")
    seen = []
    resumed = extract.extract(model, TEXTS, out_dir=tmp_path / "part",
                              on_shard=lambda i, r: seen.append((i, r)), **kw)
    assert seen[0] == (2, 24)  # continued after the two committed shards
    np.testing.assert_array_equal(resumed.read_all(), full.read_all())
    # A complete store is returned as is; a different corpus in the same directory is refused.
    again = extract.extract(model, TEXTS, out_dir=tmp_path / "part",
                            on_shard=lambda i, r: pytest.fail("recomputed"), **kw)
    assert again.num_rows == len(TEXTS)
    with pytest.raises(extract.StoreError, match="text_fingerprint"):
        extract.extract(model, TEXTS[::-1], out_dir=tmp_path / "part", **kw)
    fresh = extract.extract(model, TEXTS[::-1], out_dir=tmp_path / "part", resume=False, **kw)
    # Reversed order puts texts into other batches (other padded lengths): equal to float32 rounding.
    np.testing.assert_allclose(fresh.read_all(), full.read_all()[::-1], rtol=1e-5, atol=1e-6)


def test_per_token_states_ids_and_offsets(bert_model, tmp_path):
    model = bert_model
    texts = ["w1 w22 w3", "W4", "w5 w6"]
    rows = extract.extract(model, texts, per_token=True, max_length=40, batch_size=4,
                           out_dir=tmp_path / "tok", progress=False).read_all()
    enc = model.tokenizer.encode_batch(texts, max_length=40)
    h = np.asarray(jax.jit(model.__call__)(enc.ids, enc.mask).last_hidden_state)
    np.testing.assert_array_equal(rows.lengths_b, enc.lengths)
    for i, t in enumerate(texts):
        st, ids, off = rows.row(i)
        n = enc.lengths[i]
        np.testing.assert_allclose(st, h[i, :n], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(ids, enc.ids[i, :n])
        words = [t[a:b] for a, b in off[1:-1]]  # skip [CLS]/[SEP]-style specials at (0, 0)
        assert words == t.split(), (words, t)


def test_data_parallel_mesh_matches_single_device(bert_model):
    model = bert_model
    mesh = jax.make_mesh((8,), ("data",))
    texts = [t for t in TEXTS if len(t.split()) < 12] * 2  # one bucket: one compilation
    single = extract.extract(model, texts, max_length=40, batch_size=4, progress=False)
    sharded = extract.extract(model, texts, max_length=40, batch_size=4, progress=False,
                              mesh=mesh)  # batch rounded up to 8, one row per device
    np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'data' axis"):
        extract.extract(model, TEXTS[:2], mesh=jax.make_mesh((8,), ("model",)), progress=False)


def test_bad_inputs(bert_model):
    model = bert_model
    with pytest.raises(ValueError, match="no texts"):
        extract.extract(model, [], progress=False)
    with pytest.raises(ValueError, match="text 1 is int"):
        extract.extract(model, ["ok", 3], progress=False)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        extract.extract(model, ["ok"], pooling="max", progress=False)
    with pytest.raises(ValueError, match="text 1 produces no tokens"):
        extract.extract(model, ["w1", ""], progress=False, add_special_tokens=False)


def test_batch_plan_covers_every_row_once():
    lengths = np.array([3, 70, 17, 17, 5, 200, 33, 9, 16, 65, 64, 2, 256])
    plan = pipeline._plan_batches(lengths, 4, pipeline.bucket_lengths(256))
    rows = np.concatenate([r for _, r in plan])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(lengths)))
    assert all(len(r) == 4 for _, r in plan[:-1]) and len(plan[-1][1]) <= 4
    assert all((lengths[r] <= blen).all() for blen, r in plan)
