"""Shared helpers for causal-LM parity tests against transformers (tier 2: tiny random models)."""

from __future__ import annotations

import json
import pathlib

import numpy as np


def save_tiny(hf_model, path: pathlib.Path):
    """save_pretrained as safetensors; returns (config dict, HF-named numpy tensors)."""
    import safetensors.numpy

    hf_model.save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    return cfg, tensors


def padded_batch(vocab: int, lengths, t: int, side: str, seed: int = 0):
    """Random ids [B, T] with left or right padding, mask [B, T] and mask-aware positions."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    ids = rng.integers(0, vocab, size=(b, t)).astype(np.int64)
    mask = np.zeros((b, t), np.int64)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, t - n:] = 1
    ids = np.where(mask > 0, ids, 0)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    return ids, mask, pos


def hf_forward(hf_model, ids, mask, pos):
    """transformers float32 forward: (hidden_states tuple as numpy, logits numpy)."""
    import torch

    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(pos), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.logits.numpy()


def assert_parity(out, hf_hidden, hf_logits, mask, atol=1e-4, rtol=1e-4):
    """Every layer's hidden state and the logits agree on real (non-padding) tokens."""
    real = mask.astype(bool)
    assert len(out.hidden_states) == len(hf_hidden)
    for i, (ours, ref) in enumerate(zip(out.hidden_states, hf_hidden)):
        np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=atol, rtol=rtol,
                                   err_msg=f"hidden state {i}")
    np.testing.assert_allclose(np.asarray(out.logits)[real], hf_logits[real], atol=atol, rtol=rtol,
                               err_msg="logits")
