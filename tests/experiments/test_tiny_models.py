"""The tiny fixtures load through linalign.checkpoints.load."""

import numpy as np


def test_tiny_models_load(tiny_models):
    from linalign import checkpoints
    for name, path in tiny_models.items():
        m = checkpoints.load(path)
        enc = m.tokenizer.encode_batch(["The team won the match."], max_length=32)
        out = m(enc.ids, enc.mask)
        assert out.last_hidden_state.shape[0] == 1
        assert np.isfinite(np.asarray(out.last_hidden_state)).all()
        assert m.is_causal == name.startswith("llama")
