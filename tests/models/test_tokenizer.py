"""Tokenizer wrapper: padding sides, truncation policy, offsets, special tokens, chat template."""

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors

from linalign.models.tokenizer import Tokenizer, TruncationError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "##s", "."]


def _bert_dir(tmp_path):
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    d = tmp_path / "bert_tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
         "model_max_length": 8}))
    return d


def _bos_dir(tmp_path):
    vocab = {w: i for i, w in enumerate(["<s>", "</s>", "<unk>", "the", "cat", "sat", "."])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    d = tmp_path / "bos_tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True,
         "chat_template": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
                          "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}))
    return d


def test_from_dir_special_tokens(tmp_path):
    t = Tokenizer.from_dir(_bert_dir(tmp_path))
    assert (t.bos_id, t.eos_id, t.pad_id, t.add_bos, t.model_max_length) == (None, 3, 0, False, 8)
    assert t.vocab()["cat"] == 5
    assert t.encode("The cat sat.") == [2, 4, 5, 6, 12, 3]
    assert t.decode([2, 4, 5, 3, 0]) == "the cat"


def test_padding_sides_and_offsets(tmp_path):
    t = Tokenizer.from_dir(_bert_dir(tmp_path))
    texts = ["The cat", "a dog sat on the mat"]
    r = t.encode_batch(texts, max_length=8)
    l = t.encode_batch(texts, max_length=8, padding_side="left")
    np.testing.assert_array_equal(r.lengths, [4, 8])
    np.testing.assert_array_equal(r.ids[0], [2, 4, 5, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(l.ids[0], [0, 0, 0, 0, 2, 4, 5, 3])
    np.testing.assert_array_equal(l.mask[0], [0, 0, 0, 0, 1, 1, 1, 1])
    # Offsets point into the original (un-lowercased) text; specials get (0, 0).
    np.testing.assert_array_equal(r.offsets[0, :4], [[0, 0], [0, 3], [4, 7], [0, 0]])
    assert texts[0][slice(*r.offsets[0, 1])] == "The"
    np.testing.assert_array_equal(l.offsets[0, 4:], r.offsets[0, :4])
    assert t.encode_batch(texts, pad_to=12).ids.shape == (2, 12)
    assert t.encode_batch(["the"], pad_to_multiple_of=16).ids.shape == (1, 16)
    with pytest.raises(ValueError, match="pad_to=3"):
        t.encode_batch(texts, pad_to=3)


def test_truncation_policies(tmp_path):
    t = Tokenizer.from_dir(_bert_dir(tmp_path))
    long = "the cat sat on the mat " * 3
    with pytest.warns(UserWarning, match=r"exceed max_length=6 tokens \(first: row 1, 20 tokens\)"):
        e = t.encode_batch(["the cat", long], max_length=6)
    np.testing.assert_array_equal(e.ids[1], [2, 4, 5, 6, 7, 3])  # [SEP] kept after cutting
    np.testing.assert_array_equal(e.truncated, [False, True])
    with pytest.raises(TruncationError, match="row 1"):
        t.encode_batch(["the cat", long], max_length=6, truncation="error")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.encode_batch([long], max_length=6, truncation="silent")
    with pytest.raises(ValueError, match="truncation must be one of"):
        t.encode_batch([long], truncation="drop")
    # Default max_length comes from tokenizer_config.json's model_max_length (8).
    with pytest.warns(UserWarning, match="max_length=8"):
        t.encode_batch([long])


def test_add_bos_and_chat_template(tmp_path):
    t = Tokenizer.from_dir(_bos_dir(tmp_path))
    assert (t.bos_id, t.eos_id, t.add_bos) == (0, 1, True)
    assert t.encode("the cat") == [0, 3, 4]
    assert t.encode("the cat", add_special_tokens=False) == [3, 4]
    e = t.encode_batch(["the cat sat ."], max_length=3, truncation="silent")
    np.testing.assert_array_equal(e.ids[0], [0, 3, 4])  # BOS counted within max_length
    assert t.pad_id == 1  # no pad token: eos pads (masked anyway)
    s = t.apply_chat_template([{"role": "user", "content": "hi"}])
    assert s == "<user>hi</s><assistant>"
    bert = Tokenizer.from_dir(_bert_dir(tmp_path))
    with pytest.raises(ValueError, match="no chat template"):
        bert.apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        Tokenizer.from_dir(tmp_path)
