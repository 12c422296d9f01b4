"""MPNet port vs transformers: tiny random model (every layer) and all-mpnet-base-v2 (slow)."""

import numpy as np
import pytest

from linalign import checkpoints
from linalign.models import base, mpnet
from encoder_parity import (REAL_TEXTS, cosine_rows, mean_pool_np, random_batch,
                                         tiny_model_dir, torch_hidden_states)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mpnet")
    d, ref = tiny_model_dir(tmp, "mpnet")
    return d, ref, checkpoints.load(d, cache_root=tmp / "cache")


@pytest.mark.parametrize("side", ["right", "left"])
def test_tiny_every_layer_matches_transformers_padded(tiny, side):
    _, ref, m = tiny
    assert m.family == "mpnet"
    ids, mask = random_batch(4, 40, 101, pad_id=1, lengths=[40, 23, 5, 1], side=side)
    out = m(ids, mask, output_hidden_states=True)
    want = torch_hidden_states(ref, ids, mask)
    assert len(out.hidden_states) == len(want) == 4
    real = mask.astype(bool)  # padded rows of HF's output are not defined the same way
    for i, (a, b) in enumerate(zip(out.hidden_states, want)):
        np.testing.assert_allclose(np.asarray(a)[real], b[real], atol=1e-4, rtol=1e-4,
                                   err_msg=f"layer {i}")
    if side == "right":
        np.testing.assert_allclose(np.asarray(out.last_hidden_state), want[-1], atol=1e-4, rtol=1e-4)


def test_relative_position_buckets_match_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    rel = np.arange(-300, 301)[None, :]
    want = MPNetEncoder.relative_position_bucket(torch.tensor(rel)).numpy()
    np.testing.assert_array_equal(np.asarray(mpnet.relative_position_bucket(rel)), want)


def test_left_and_right_padding_pool_identically(tiny):
    _, _, m = tiny
    lengths = [9, 4]
    ids_r, mask_r = random_batch(2, 11, 101, 1, lengths, seed=2)
    ids_l = np.ones_like(ids_r)
    mask_l = np.zeros_like(mask_r)
    for i, n in enumerate(lengths):
        ids_l[i, 11 - n:], mask_l[i, 11 - n:] = ids_r[i, :n], 1
    for pooling in base.POOLINGS:
        a = base.pool(m(ids_r, mask_r).last_hidden_state, mask_r, pooling)
        b = base.pool(m(ids_l, mask_l).last_hidden_state, mask_l, pooling)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_unsupported_config():
    hf = {"model_type": "mpnet", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2}
    mpnet.Config.from_hf_config(hf)
    with pytest.raises(base.UnsupportedConfigError, match="relative_attention_num_buckets=64"):
        mpnet.Config.from_hf_config(dict(hf, relative_attention_num_buckets=64))
    with pytest.raises(base.UnsupportedConfigError, match="type_vocab_size"):
        mpnet.Config.from_hf_config(dict(hf, type_vocab_size=2))


@pytest.mark.slow
def test_all_mpnet_base_v2_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m = checkpoints.load("all-mpnet-base-v2")
    assert (m.config.hidden_size, m.config.num_layers, m.default_pooling) == (768, 12, "mean")
    assert m.tokenizer.model_max_length == 384  # sentence-transformers' max_seq_length
    ref = transformers.AutoModel.from_pretrained(str(checkpoints.resolve("all-mpnet-base-v2"))).eval()
    enc = m.tokenizer.encode_batch(REAL_TEXTS)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(enc.ids, dtype=torch.long),
                   attention_mask=torch.tensor(enc.mask, dtype=torch.long)).last_hidden_state.numpy()
    got = np.asarray(m(enc.ids, enc.mask).last_hidden_state)
    real = enc.mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    cos = cosine_rows(np.asarray(base.pool(got, enc.mask, "mean")), mean_pool_np(want, enc.mask))
    assert (cos > 0.9999).all(), cos
