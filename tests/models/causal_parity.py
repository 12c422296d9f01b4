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


def ref_cache_dir(request, tmp_path_factory) -> pathlib.Path:
    """Where transformers reference outputs are kept: pytest's cache directory when the cache
    plugin is on (reused across runs), else a fresh temporary directory (recomputed each run)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return cache.mkdir("linalign_causal_ref")
    return tmp_path_factory.mktemp("linalign_causal_ref")


def gguf_reference(cache_dir: pathlib.Path, gguf_path: pathlib.Path, prompts: list, chat: bool,
                   max_new_tokens: int = 20) -> dict:
    """transformers' own GGUF load (float32) as the reference, cached as .npz next to pytest's cache.

    Returns a dict with, per prompt i: ``ids_i`` (transformers tokenizer ids), ``hidden_i``
    [T, hidden] final hidden state (after the final norm), ``logits_i`` [vocab] next-token logits,
    and ``gen_i`` greedy new tokens from ``generate``.
    """
    import hashlib
    import os

    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{gguf_path.name}:{st.st_size}:{prompts}:{chat}:{max_new_tokens}".encode()).hexdigest()[:16]
    out = cache_dir / f"{gguf_path.stem}-{key}.npz"
    if out.exists():
        return dict(np.load(out))
    import torch
    import transformers

    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32).eval()
    ref = {}
    for i, p in enumerate(prompts):
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            o = model(ids, output_hidden_states=True)
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        ref[f"ids_{i}"] = ids[0].numpy()
        ref[f"hidden_{i}"] = o.hidden_states[-1][0].numpy()
        ref[f"logits_{i}"] = o.logits[0, -1].numpy()
        ref[f"gen_{i}"] = gen[0, ids.shape[1]:].numpy()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **ref)
    os.replace(tmp, out)
    return ref


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) of the softmax distributions, in float64."""
    p = p_logits.astype(np.float64) - p_logits.max()
    q = q_logits.astype(np.float64) - q_logits.max()
    lp = p - np.log(np.exp(p).sum())
    lq = q - np.log(np.exp(q).sum())
    return float((np.exp(lp) * (lp - lq)).sum())
