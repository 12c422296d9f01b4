"""BERT port vs transformers: tiny random model (every layer) and all-MiniLM-L6-v2 (slow)."""

import numpy as np
import pytest

from linalign import checkpoints
from linalign.models import base, bert
from encoder_parity import (REAL_TEXTS, cosine_rows, mean_pool_np, random_batch,
                                         tiny_model_dir, torch_hidden_states)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    d, ref = tiny_model_dir(tmp, "bert")
    m = checkpoints.load(d, cache_root=tmp / "cache")
    return d, ref, m


def test_tiny_every_layer_matches_transformers_padded(tiny):
    _, ref, m = tiny
    assert m.family == "bert" and not m.is_causal
    ids, mask = random_batch(4, 13, 101, pad_id=0, lengths=[13, 9, 4, 1])
    out = m(ids, mask, output_hidden_states=True)
    want = torch_hidden_states(ref, ids, mask)
    assert len(out.hidden_states) == len(want) == 4
    for i, (a, b) in enumerate(zip(out.hidden_states, want)):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-4, rtol=1e-4, err_msg=f"layer {i}")
    np.testing.assert_array_equal(np.asarray(out.last_hidden_state), np.asarray(out.hidden_states[-1]))
    assert out.logits is None


def test_left_and_right_padding_agree(tiny):
    _, _, m = tiny
    lengths = [10, 6, 3]
    ids_r, mask_r = random_batch(3, 12, 101, 0, lengths, seed=3, side="right")
    ids_l, mask_l = random_batch(3, 12, 101, 0, lengths, seed=3, side="left")
    # Same tokens, shifted: build the left-padded batch from the right-padded one.
    for i, n in enumerate(lengths):
        ids_l[i, 12 - n:] = ids_r[i, :n]
    h_r = np.asarray(m(ids_r, mask_r).last_hidden_state)
    h_l = np.asarray(m(ids_l, mask_l).last_hidden_state)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(h_l[i, 12 - n:], h_r[i, :n], atol=1e-5, rtol=1e-5)
    for pooling in base.POOLINGS:
        np.testing.assert_allclose(np.asarray(base.pool(h_l, mask_l, pooling)),
                                   np.asarray(base.pool(h_r, mask_r, pooling)), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_tokens(tiny):
    _, _, m = tiny
    ids, mask = random_batch(1, 7, 101, 0, [7], seed=5)
    padded = np.concatenate([ids, np.zeros((1, 9), np.int32)], 1)
    pmask = np.concatenate([mask, np.zeros((1, 9), np.int32)], 1)
    np.testing.assert_allclose(np.asarray(m(padded, pmask).last_hidden_state)[:, :7],
                               np.asarray(m(ids, mask).last_hidden_state), atol=1e-5, rtol=1e-5)


def test_unsupported_config_attributes():
    hf = {"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 16}
    bert.Config.from_hf_config(hf)
    with pytest.raises(base.UnsupportedConfigError, match="relative_key"):
        bert.Config.from_hf_config(dict(hf, position_embedding_type="relative_key"))
    with pytest.raises(base.UnsupportedConfigError, match=r"\['rotary_dim'\]"):
        bert.Config.from_hf_config(dict(hf, rotary_dim=4))
    with pytest.raises(base.UnsupportedConfigError, match="hidden_act"):
        bert.Config.from_hf_config(dict(hf, hidden_act="swish"))
    with pytest.raises(base.UnsupportedConfigError, match="is_decoder"):
        bert.Config.from_hf_config(dict(hf, is_decoder=True))


def test_converter_rejects_shape_mismatch_and_missing_tensor(tiny):
    _, ref, m = tiny
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    bad = dict(sd)
    bad["encoder.layer.1.intermediate.dense.weight"] = bad["encoder.layer.1.intermediate.dense.weight"][:-1]
    with pytest.raises(base.CheckpointError, match=r"encoder.layer.1.intermediate.dense.weight.*\(47, 32\)"):
        bert.convert_params(bad, m.config)
    del sd["encoder.layer.2.output.dense.bias"]
    with pytest.raises(base.CheckpointError, match="lacks tensor 'encoder.layer.2.output.dense.bias'"):
        bert.convert_params(sd, m.config)


@pytest.mark.slow
def test_all_minilm_l6_v2_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m = checkpoints.load("all-minilm-l6-v2")
    assert (m.config.hidden_size, m.config.num_layers, m.default_pooling) == (384, 6, "mean")
    ref = transformers.AutoModel.from_pretrained(str(checkpoints.resolve("all-minilm-l6-v2"))).eval()
    enc = m.tokenizer.encode_batch(REAL_TEXTS)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(enc.ids, dtype=torch.long),
                   attention_mask=torch.tensor(enc.mask, dtype=torch.long)).last_hidden_state.numpy()
    got = np.asarray(m(enc.ids, enc.mask).last_hidden_state)
    real = enc.mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-2, rtol=1e-2)
    # Much tighter in practice; guard against a silent drift well inside the 1e-2 budget.
    np.testing.assert_allclose(got[real], want[real], atol=2e-4, rtol=0)
    cos = cosine_rows(np.asarray(base.pool(got, enc.mask, "mean")), mean_pool_np(want, enc.mask))
    assert (cos > 0.9999).all(), cos
