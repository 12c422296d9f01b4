"""Shared helpers for the BERT / MPNet parity tests (tiny random HF models and real checkpoints)."""

import numpy as np
import pytest


def tiny_model_dir(tmp_path, kind, **overrides):
    """Saves a tiny random transformers BertModel/MPNetModel; returns (dir, torch model)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=64)
    common.update(overrides)
    if kind == "bert":
        cfg = transformers.BertConfig(type_vocab_size=2, **common)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.MPNetConfig(**common)
        model = transformers.MPNetModel(cfg)
    model.eval()
    d = tmp_path / f"tiny_{kind}"
    model.save_pretrained(d, safe_serialization=True)
    write_tiny_tokenizer(d, common["vocab_size"], kind)
    return d, model


def write_tiny_tokenizer(d, vocab_size, kind):
    """A WordPiece tokenizer over ``vocab_size`` made-up words, saved like HF does."""
    import json

    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers, processors

    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        pad, unk, cls_, sep = specials
    else:  # MPNet's layout: <s>=0, <pad>=1, </s>=2, [UNK]=3
        specials = ["<s>", "<pad>", "</s>", "[UNK]"]
        cls_, pad, sep, unk = specials
    words = specials + [f"w{i}" for i in range(vocab_size - len(specials))]
    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_} $A {sep}", special_tokens=[(cls_, vocab[cls_]), (sep, vocab[sep])])
    tok.add_special_tokens(specials)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": pad, "cls_token": cls_, "sep_token": sep, "unk_token": unk,
         "model_max_length": 64}))


def random_batch(batch, seq, vocab, pad_id, lengths, seed=0, side="right"):
    """[B, T] ids avoiding special ids < 3 and pad, padded on ``side``; [B, T] mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(batch, seq)).astype(np.int32)
    mask = np.zeros((batch, seq), np.int32)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, seq - n:] = 1
    return np.where(mask > 0, ids, pad_id).astype(np.int32), mask


def torch_hidden_states(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def mean_pool_np(h_btd, mask_bt):
    m = mask_bt[..., None].astype(np.float64)
    return (h_btd.astype(np.float64) * m).sum(1) / m.sum(1)


def cosine_rows(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


REAL_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Shares in the company rose 5% after it reported better-than-expected profits for the quarter.",
    "A short one.",
    "Naïve café owners in Zürich worry about the euro — and about tourists who never tip.",
    "The striker scored twice in the second half, sealing a comfortable win for the home side "
    "and lifting them to third place in the league table before the winter break.",
]
