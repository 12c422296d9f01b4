"""Character-offset pairing and tokenizer-compatibility measures."""

import numpy as np
import pytest

from linalign.eval import pairing


def test_pairing_rule_hand_example():
    # text: "unbelievable cats"
    #        0123456789012345 6
    # target A: [CLS](0,0) "un"(0,2) "believ"(2,8) "able"(8,12) "cats"(13,17)
    # source B: <bos>(0,0) "unbel"(0,5) "ievable"(5,12) " ca"(12,15) "ts"(15,17)
    a = np.array([[0, 0], [0, 2], [2, 8], [8, 12], [13, 17]])
    b = np.array([[0, 0], [0, 5], [5, 12], [12, 15], [15, 17]])
    j = pairing.pair_offsets(a, b)
    # un(ends 2)->unbel(5); believ(8)->ievable(12); able(12)->ievable(12); cats(17)->ts(17)
    np.testing.assert_array_equal(j, [-1, 1, 2, 2, 4])


def test_pairing_ties_go_to_last_and_unreachable_is_minus_one():
    a = np.array([[0, 1], [1, 4], [4, 9]])
    b = np.array([[0, 1], [0, 1], [1, 3]])  # two byte pieces ending at 1; nothing reaches 4
    np.testing.assert_array_equal(pairing.pair_offsets(a, b), [1, -1, -1])


def test_pairing_respects_masks_and_batch_gather():
    a = np.array([[[0, 2], [2, 4]], [[0, 3], [0, 0]]])
    ma = np.array([[1, 1], [1, 0]])
    b = np.array([[[0, 4], [4, 4]], [[0, 1], [1, 3]]])
    mb = np.array([[1, 0], [1, 1]])
    p = pairing.pair_batch(a, ma, b, mb)
    np.testing.assert_array_equal(p, [[0, 0], [1, -1]])
    sa = np.arange(2 * 2 * 3).reshape(2, 2, 3)
    sb = 100 + np.arange(2 * 2 * 2).reshape(2, 2, 2)
    za, zb = pairing.gather_pairs(sa, sb, p)
    np.testing.assert_array_equal(za, [sa[0, 0], sa[0, 1], sa[1, 0]])
    np.testing.assert_array_equal(zb, [sb[0, 0], sb[0, 0], sb[1, 1]])


def test_exact_match_rate_trims_whitespace():
    text = "the cat sat"
    a = np.array([[[0, 3], [3, 7], [7, 11]]])          # "the", " cat", " sat"
    b = np.array([[[0, 3], [4, 7], [8, 9], [9, 11]]])  # "the", "cat", "s", "at"
    m = lambda x: np.ones(x.shape[:2])
    assert pairing.exact_token_match_rate([text], a, m(a), b, m(b)) == pytest.approx(2 / 3, rel=0, abs=1e-12)
    assert pairing.exact_token_match_rate([text], b, m(b), a, m(a)) == pytest.approx(2 / 4, rel=0, abs=1e-12)
    with pytest.raises(ValueError, match="1 texts but 2 target"):
        pairing.exact_token_match_rate([text], np.concatenate([a, a]), m(a), b, m(b))


def test_surface_forms_and_jaccard():
    assert pairing.surface_form("Ġthe", "byte_level") == " the"
    assert pairing.surface_form("Ã©", "byte_level") == "é"
    assert pairing.surface_form("▁the", "sentencepiece") == " the"
    assert pairing.surface_form("<0x41>", "sentencepiece") == "A"
    assert pairing.surface_form("##ing", "wordpiece") == "ing"
    assert pairing.surface_form("the", "wordpiece") == " the"
    j = pairing.jaccard_vocab_overlap(["Ġthe", "ing", "<s>"], ["▁the", "ing", "x", "<pad>"],
                                      "byte_level", "sentencepiece", ["<s>"], ["<pad>"])
    assert j == pytest.approx(2 / 3, rel=0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown tokenizer scheme"):
        pairing.surface_form("a", "bpe")


@pytest.mark.slow
def test_real_minilm_offsets_and_pairing_against_mpnet():
    from linalign import assets
    from linalign.models.tokenizer import Tokenizer

    text = "Unbelievably, the café’s tokenizers disagree."
    mini = Tokenizer.from_dir(assets.path("all-minilm-l6-v2")).encode_batch([text], max_length=64)
    # Known WordPiece spans of this text (lower-cased, accents stripped: "café" -> "cafe").
    expected = [(0, 0), (0, 2), (2, 5), (5, 7), (7, 9), (9, 12), (12, 13), (14, 17), (18, 22),
                (22, 23), (23, 24), (25, 30), (30, 34), (34, 35), (36, 44), (44, 45), (0, 0)]
    assert [tuple(o) for o in mini.offsets[0]] == expected
    # Pair MiniLM (target) with a character-level view: a fake source that cuts per word.
    words = np.array([[0, 13], [14, 17], [18, 24], [25, 35], [36, 45]])
    j = pairing.pair_offsets(mini.offsets[0], words, mini.mask[0])
    np.testing.assert_array_equal(j, [-1, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 3, 3, 3, 4, 4, -1])
    mp = Tokenizer.from_dir(assets.path("all-mpnet-base-v2")).encode_batch([text], max_length=64)
    # MPNet's WordPiece cuts this text identically: pairing is the identity on real tokens.
    p = pairing.pair_offsets(mini.offsets[0], mp.offsets[0], mini.mask[0], mp.mask[0])
    np.testing.assert_array_equal(p, [-1] + list(range(1, 16)) + [-1])
    rate = pairing.exact_token_match_rate([text], mini.offsets, mini.mask, mp.offsets, mp.mask)
    assert rate == pytest.approx(1.0, rel=0, abs=1e-12)


@pytest.mark.slow
def test_real_minilm_vs_smollm2_pairing():
    from linalign import assets, checkpoints
    from linalign.models.tokenizer import Tokenizer

    text = "Unbelievably, the café’s tokenizers disagree."
    mini = Tokenizer.from_dir(assets.path("all-minilm-l6-v2")).encode_batch([text], max_length=64)
    smol = checkpoints.load("smollm2-135m-instruct").tokenizer.encode_batch([text], max_length=64)
    # Known byte-level BPE spans: Un|belie|v|ably|,|Ġthe|Ġcafé|’|s|Ġtoken|izers|Ġdisagree|.
    assert [tuple(o) for o in smol.offsets[0]] == [
        (0, 2), (2, 7), (7, 8), (8, 12), (12, 13), (13, 17), (17, 22), (22, 23), (23, 24),
        (24, 30), (30, 35), (35, 44), (44, 45)]
    p = pairing.pair_offsets(mini.offsets[0], smol.offsets[0], mini.mask[0], smol.mask[0])
    np.testing.assert_array_equal(p, [-1, 0, 1, 1, 3, 3, 4, 5, 6, 7, 8, 9, 10, 10, 11, 12, -1])
    # MiniLM's 15 real tokens; 9 share a (whitespace-trimmed) span with a SmolLM2 token:
    # un , the cafe ’ s token disagree .
    rate = pairing.exact_token_match_rate([text], mini.offsets, mini.mask, smol.offsets, smol.mask)
    assert rate == pytest.approx(9 / 15, rel=0, abs=1e-12)
    # Reverse direction counts SmolLM2's 13 tokens: Un , the café ’ s token disagree . -> 9/13.
    rate = pairing.exact_token_match_rate([text], smol.offsets, smol.mask, mini.offsets, mini.mask)
    assert rate == pytest.approx(9 / 13, rel=0, abs=1e-12)
