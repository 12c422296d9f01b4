"""Pairing per-token states across two tokenizers, and two tokenizer-compatibility measures.

Pairing (the paper's rule): for target token i whose character span ends at e_A^i, the
paired source token is j = argmin_k { e_B^k : e_B^k >= e_A^i }, i.e. the first source token
whose span reaches at least as far into the text. For a causal source model, the state at j
has read all the text the target state at i has read, and as little more as possible.
Ties (several source tokens ending at the same offset, e.g. byte-level pieces of one
multi-byte character) go to the LAST of them, the one that has read the whole span.
Tokens with empty spans (start == end: BOS, CLS, SEP, padding) are never paired; a
target token with no source token reaching its end gets -1.

Offsets are character offsets into the original text, [start, end), as Hugging Face
``tokenizers`` reports them.
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional, Sequence

import numpy as np


def _valid(offsets_t2: np.ndarray, mask_t: Optional[np.ndarray]) -> np.ndarray:
    ok = offsets_t2[:, 1] > offsets_t2[:, 0]
    if mask_t is not None:
        ok &= np.asarray(mask_t, bool)
    return ok


def _check_offsets(offsets, name):
    offsets = np.asarray(offsets)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"{name} offsets must be [tokens, 2], got shape {offsets.shape}")
    return offsets.astype(np.int64)


def pair_offsets(target_offsets_t2, source_offsets_s2, target_mask_t=None,
                 source_mask_s=None) -> np.ndarray:
    """Pairs each target token with a source token by end offsets (rule in module docstring).

    Args:
      target_offsets_t2: [T, 2] target (A) token spans.
      source_offsets_s2: [S, 2] source (B) token spans of the same text.
      target_mask_t: optional [T] 1 for real tokens.
      source_mask_s: optional [S] 1 for real tokens.

    Returns:
      [T] int64 source index per target token, -1 where unpaired.
    """
    ta = _check_offsets(target_offsets_t2, "target")
    sb = _check_offsets(source_offsets_s2, "source")
    va, vb = _valid(ta, target_mask_t), _valid(sb, source_mask_s)
    out = np.full(len(ta), -1, np.int64)
    src_idx = np.flatnonzero(vb)
    if len(src_idx) == 0:
        return out
    ends_b = sb[src_idx, 1]
    for i in np.flatnonzero(va):
        reach = ends_b >= ta[i, 1]
        if not reach.any():
            continue
        e_min = ends_b[reach].min()
        out[i] = src_idx[np.flatnonzero(ends_b == e_min)[-1]]
    return out


def pair_batch(target_offsets_bt2, target_mask_bt, source_offsets_bs2, source_mask_bs) -> np.ndarray:
    """``pair_offsets`` row by row.

    Args:
      target_offsets_bt2: [B, T, 2]; target_mask_bt: [B, T].
      source_offsets_bs2: [B, S, 2]; source_mask_bs: [B, S].

    Returns:
      [B, T] int64 source indices, -1 where unpaired.
    """
    ta, tb = np.asarray(target_offsets_bt2), np.asarray(source_offsets_bs2)
    if ta.shape[0] != tb.shape[0]:
        raise ValueError(f"target has {ta.shape[0]} texts but source has {tb.shape[0]}")
    return np.stack([pair_offsets(ta[b], tb[b], target_mask_bt[b], source_mask_bs[b])
                     for b in range(ta.shape[0])])


def gather_pairs(target_states_btd, source_states_bse, pairs_bt):
    """Flattens paired per-token states into the two matrices an affine map is fit on.

    Args:
      target_states_btd: [B, T, d_A] target states.
      source_states_bse: [B, S, d_B] source states.
      pairs_bt: [B, T] from ``pair_batch``.

    Returns:
      (z_a [N, d_A], z_b [N, d_B]) over the N paired tokens, target order.
    """
    pairs_bt = np.asarray(pairs_bt)
    b_idx, t_idx = np.nonzero(pairs_bt >= 0)
    za = np.asarray(target_states_btd)[b_idx, t_idx]
    zb = np.asarray(source_states_bse)[b_idx, pairs_bt[b_idx, t_idx]]
    return za, zb


def _trimmed_span(text: str, start: int, end: int):
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def exact_token_match_rate(texts: Sequence[str], target_offsets, target_masks, source_offsets,
                           source_masks) -> float:
    """Fraction of target tokens whose span is also a source token's span.

    Definition: for each text, every real target token with a non-empty span is trimmed of
    leading/trailing whitespace (byte-level BPE and SentencePiece disagree on whether a
    word's leading space belongs to it); pure-whitespace tokens are dropped. The rate is
    (number of target tokens whose trimmed span equals the trimmed span of some source token
    of the same text) / (number of target tokens kept), pooled over all texts. It is
    asymmetric: rate(A, B) counts A's tokens. 1.0 means B cuts the text at least
    everywhere A does, on these texts.

    Args:
      texts: [B] the texts both tokenizers encoded (offsets index into these).
      target_offsets: [B, T, 2]; target_masks: [B, T].
      source_offsets: [B, S, 2]; source_masks: [B, S].

    Returns:
      Rate in [0, 1].
    """
    if not (len(texts) == len(target_offsets) == len(source_offsets)):
        raise ValueError(f"{len(texts)} texts but {len(target_offsets)} target and "
                         f"{len(source_offsets)} source offset rows")
    hit = total = 0
    for b, text in enumerate(texts):
        def spans(offs, mask):
            offs = _check_offsets(offs, "token")
            keep = _valid(offs, mask)
            return [s for s in (_trimmed_span(text, int(a), int(e)) for a, e in offs[keep]) if s]
        sa = spans(target_offsets[b], target_masks[b])
        sb = set(spans(source_offsets[b], source_masks[b]))
        total += len(sa)
        hit += sum(s in sb for s in sa)
    if total == 0:
        raise ValueError("no target tokens with non-empty spans; cannot compute a match rate")
    return hit / total


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict:
    # GPT-2's reversible byte <-> printable-unicode table (the one byte-level BPE vocabularies
    # are written in), inverted.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


SCHEMES = ("byte_level", "sentencepiece", "wordpiece")


def surface_form(token: str, scheme: str) -> str:
    """A vocabulary entry as the text it stands for, with word-initial tokens starting with " ".

    * byte_level (GPT-2 style, e.g. SmolLM2): map the printable alphabet back to bytes and
      decode UTF-8 (undecodable partial characters keep their raw form with a "\\x" marker);
      "Ġthe" -> " the".
    * sentencepiece (e.g. Gemma): "▁" -> " "; byte tokens "<0xNN>" -> that byte as text
      when it is ASCII.
    * wordpiece (BERT): "##ing" -> "ing" (continuation); any other token is word-initial
      and gets a leading space: "the" -> " the".

    Args:
      token: the vocabulary string.
      scheme: one of SCHEMES.
    """
    if scheme == "byte_level":
        dec = _byte_decoder()
        if all(ch in dec for ch in token):
            raw = bytes(dec[ch] for ch in token)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return "\\x" + raw.hex()
        return token
    if scheme == "sentencepiece":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            b = int(token[3:5], 16)
            return chr(b) if b < 128 else "\\x" + token[3:5].lower()
        return token.replace("▁", " ")
    if scheme == "wordpiece":
        return token[2:] if token.startswith("##") else " " + token
    raise ValueError(f"unknown tokenizer scheme {scheme!r}; expected one of {SCHEMES}")


def jaccard_vocab_overlap(vocab_a: Iterable[str], vocab_b: Iterable[str], scheme_a: str,
                          scheme_b: str, special_a: Iterable[str] = (),
                          special_b: Iterable[str] = ()) -> float:
    """Jaccard overlap |S_A ∩ S_B| / |S_A ∪ S_B| of two vocabularies' surface-form sets.

    S_X = { surface_form(t, scheme_X) : t in vocab_X, t not a special token }, so the
    same string written in two tokenizers' alphabets ("Ġthe", "▁the") counts once.

    Args:
      vocab_a, vocab_b: token strings of each vocabulary.
      scheme_a, scheme_b: their ``SCHEMES`` entry.
      special_a, special_b: special/added tokens to leave out (BOS, <pad>, [CLS], ...).

    Returns:
      Overlap in [0, 1].
    """
    sp_a, sp_b = set(special_a), set(special_b)
    sa = {surface_form(t, scheme_a) for t in vocab_a if t not in sp_a}
    sb = {surface_form(t, scheme_b) for t in vocab_b if t not in sp_b}
    if not sa or not sb:
        raise ValueError("empty vocabulary after removing special tokens")
    return len(sa & sb) / len(sa | sb)


def tokenizer_scheme(tokenizer_json: dict) -> str:
    """Guesses the SCHEMES entry from a Hugging Face tokenizer.json dict.

    WordPiece models -> "wordpiece"; a ByteLevel pre-tokenizer or decoder -> "byte_level";
    otherwise (BPE/Unigram with "▁" metaspace) -> "sentencepiece".
    """
    model_type = (tokenizer_json.get("model") or {}).get("type")
    if model_type == "WordPiece":
        return "wordpiece"
    blob = str(tokenizer_json.get("pre_tokenizer")) + str(tokenizer_json.get("decoder"))
    return "byte_level" if "ByteLevel" in blob else "sentencepiece"
