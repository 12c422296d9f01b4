"""Cross-model generation: source transformer -> per-token affine map -> target LM head."""

from __future__ import annotations

import re

import numpy as np
from absl import logging

from linalign.eval import pairing, textgen
from linalign.eval.report import Report
from linalign.experiments import common as C

# Plain-text prompts (no chat template: the pair mixes an instruct and a base model).
PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a little",
    "The best way to learn a new language is",
    "Scientists have discovered that",
    "The stock market fell sharply today after",
    "In the football match on Saturday,",
    "The new smartphone features a",
    "My favourite food is",
    "The government announced a plan to",
    "Water boils at a temperature of",
    "The film won three awards, including",
    "To make a cup of tea, first",
)

_SPECIAL = re.compile(r"^(<[^>]*>|\[[A-Za-z_]+\])$")
_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def vocab_for_jaccard(tokenizer):
    """(token strings, scheme, special tokens) of a linalign Tokenizer.

    The scheme is the marker most used by the vocabulary ("Ġ" byte-level, "▁" SentencePiece,
    "##" WordPiece). Special tokens are entries that look like "<...>" or "[...]" (BOS,
    <pad>, <unusedN>, [CLS], chat markers), except SentencePiece byte tokens "<0xNN>".
    """
    vocab = list(tokenizer.vocab())
    counts = {"byte_level": sum(t.startswith("Ġ") for t in vocab),
              "sentencepiece": sum(t.startswith("▁") for t in vocab),
              "wordpiece": sum(t.startswith("##") for t in vocab)}
    scheme = max(counts, key=counts.get)
    special = [t for t in vocab if _SPECIAL.match(t) and not _BYTE.match(t)]
    return vocab, scheme, special


def _row_offsets(rows, i):
    _, _, offs = rows.row(i)
    return offs


def paired_token_states(rows_a, rows_b):
    """Pairs per-token states of two models on the same texts by character offsets.

    Args:
      rows_a, rows_b: ``TokenRows`` of the target and the source (same texts, same order).

    Returns:
      (z_a [N, d_a], z_b [N, d_b]).
    """
    if len(rows_a) != len(rows_b):
        raise ValueError(f"target has {len(rows_a)} texts, source {len(rows_b)}")
    za, zb = [], []
    for i in range(len(rows_a)):
        sa, _, oa = rows_a.row(i)
        sb, _, ob = rows_b.row(i)
        j = pairing.pair_offsets(oa, ob)
        ok = j >= 0
        za.append(np.asarray(sa)[ok])
        zb.append(np.asarray(sb)[j[ok]])
    return np.concatenate(za), np.concatenate(zb)


def match_rate(texts, rows_a, rows_b) -> float:
    """``pairing.exact_token_match_rate`` over TokenRows (target A's tokens counted)."""
    oa = [_row_offsets(rows_a, i) for i in range(len(texts))]
    ob = [_row_offsets(rows_b, i) for i in range(len(texts))]
    return pairing.exact_token_match_rate(texts, oa, [None] * len(oa), ob, [None] * len(ob))


class _Gen:
    """A generation's target-vocabulary ids (EOS dropped) and text."""

    def __init__(self, ids, text):
        self.ids, self.text = list(ids), text


def _greedy_all(model, prompts, max_new_tokens: int):
    """The model's own greedy continuations (KV-cached ``Decoder``, one prompt at a time)."""
    from linalign.generate.decode import GREEDY, Decoder, eos_ids_of

    dec = Decoder(model.module, model.params)
    eos = eos_ids_of(model)
    out = []
    for p in prompts:
        enc = model.tokenizer.encode_batch([p], padding_side="left")
        row = dec.generate(enc.ids, enc.mask, max_new_tokens, eos, GREEDY, 0, model.tokenizer.pad_id).rows()[0]
        row = [t for t in row if t not in set(eos)]
        out.append(_Gen(row, model.tokenizer.decode(row)))
    return out


def _cross_all(source, target, amap, prompts, max_new_tokens: int):
    """Source transformer -> map -> target LM head, greedy (``generate_from_hidden``)."""
    from linalign.generate.cross import CrossDecoder

    dec = CrossDecoder(source, (amap.w, amap.b), target)
    out = []
    for p in prompts:
        g = dec.generate(p, max_new_tokens, False)
        out.append(_Gen(g.target_ids, g.text))
    return out


def run_generation(cfg: C.StudyConfig, name: str = "generation") -> Report:
    """Every ordered pair of the causal models: fit a per-token map, generate, measure."""
    causal = [m for m in cfg.models if C.load_model(m).is_causal]
    if len(causal) < 2:
        raise ValueError(f"cross-model generation needs two causal models; got {causal} among {list(cfg.models)}")
    fit_texts, used = [], []
    per = -(-cfg.n_gen_fit // len(cfg.gen_corpora))
    for k, spec in enumerate(cfg.gen_corpora):
        try:
            t, _, nm = C.load_texts(spec, per, cfg, seed_offset=7 + k)
        except Exception as e:  # noqa: BLE001 - optional (Debian) corpora may be missing
            logging.warning("generation fit corpus %s unavailable (%s); skipping it", spec, e)
            continue
        fit_texts += t
        used.append(f"{len(t)} from {nm}")
    if not fit_texts:
        raise ValueError(f"none of the generation fit corpora {list(cfg.gen_corpora)} could be loaded")
    prompts = list(PROMPTS[: cfg.n_gen])
    rows = {m: C.embed(m, fit_texts, cfg, per_token=True) for m in causal}
    encoder = C.load_model(cfg.encoder)
    native = {}
    for m in causal:
        native[m] = _greedy_all(C.load_model(m), prompts, cfg.max_new_tokens)
        logging.info("native %s: %r", C.short(m), native[m][0].text)
    rep = Report(name, cfg.out_root, "Cross-model generation through a per-token affine map")
    rep.text(f"Map fit on per-token final hidden states of {len(fit_texts)} texts ({', '.join(used)}; "
             f"max_length {cfg.max_length}), tokens paired by character offsets (target token i "
             f"-> first source token whose span ends at or after i's end). Ridge lambda = "
             f"{cfg.gen_lam} (the paper's). Greedy decoding, {cfg.max_new_tokens} new tokens, "
             f"{len(prompts)} plain-text prompts. Cosines use {C.short(cfg.encoder)} mean-pooled "
             "embeddings of the generated text (prompt excluded).\n")
    results, table = [], []
    samples = []
    for a, b in C.ordered_pairs(causal):
        ma, mb = C.load_model(a), C.load_model(b)
        za, zb = paired_token_states(rows[a], rows[b])
        amap, lam = C.fit_map(zb, za, cfg.gen_lam)
        r2_fit = C.r2(C.apply_map(amap, zb), za)
        va, sa, spa = vocab_for_jaccard(ma.tokenizer)
        vb, sb, spb = vocab_for_jaccard(mb.tokenizer)
        jac = pairing.jaccard_vocab_overlap(va, vb, sa, sb, spa, spb)
        emr = match_rate(fit_texts, rows[a], rows[b])
        cross = _cross_all(mb, ma, amap, prompts, cfg.max_new_tokens)
        agree = float(np.mean([textgen.token_agreement(c.ids, n.ids) for c, n in zip(cross, native[a])]))
        prompt_ids = [ma.tokenizer.encode(p) for p in prompts]
        ppl_cross = textgen.perplexity(ma, prompt_ids, [c.ids for c in cross])
        ppl_native = textgen.perplexity(ma, prompt_ids, [n.ids for n in native[a]])
        texts_all = [c.text or " " for c in cross] + [n.text or " " for n in native[a]] + \
            [n.text or " " for n in native[b]]
        e = np.asarray(C.embed(cfg.encoder, texts_all, cfg))
        k = len(prompts)
        cos_a = textgen.row_cosine(e[:k], e[k:2 * k])
        cos_b = textgen.row_cosine(e[:k], e[2 * k:])
        entry = {"target": C.short(a), "source": C.short(b), "exact_token_match_rate": emr,
                 "jaccard_vocab": jac, "token_agreement": agree, "target_ppl_cross": ppl_cross,
                 "target_ppl_native": ppl_native, "cos_to_target_native": float(cos_a.mean()),
                 "cos_to_source_native": float(cos_b.mean()), "map_train_r2": r2_fit,
                 "n_token_pairs": int(len(za)), "lam": lam}
        results.append(entry)
        table.append([C.short(a), C.short(b), emr, jac, agree, ppl_cross, ppl_native,
                      cos_a.mean(), cos_b.mean(), r2_fit])
        for p, c, n_a, n_b in list(zip(prompts, cross, native[a], native[b]))[:3]:
            samples.append((f"{C.short(b)}->{C.short(a)}", p, c.text, n_a.text, n_b.text))
        logging.info("generation %s<-%s: %s", C.short(a), C.short(b), entry)
    rep.table(["target A (LM head)", "source B (transformer)", "exact token match", "Jaccard vocab",
               "agreement w/ A greedy", "A ppl of cross text", "A ppl of own text",
               "cos to A native", "cos to B native", "map train R2"], table,
              caption="Cross-model generation")
    rep.text("Paper, for reference: cross-model generation works for some pairs only; quality is "
             "predicted by the exact token match rate (r = 0.898 over 23 pairs) and Jaccard vocabulary "
             "overlap (r = 0.822); pairs with exact match above 0.7 succeed, tiny source models fail; "
             "good outputs have cosine above 0.7 to both native outputs, bad ones below 0.3. Maps "
             "there were fit on 4,000 instruction examples; here on a few hundred short texts.\n")
    groups = [f"{r['source']}->{r['target']}" for r in results]
    rep.bars("generation_measures", groups,
             {k: [r[key] for r in results] for k, key in (
                 ("exact token match", "exact_token_match_rate"), ("Jaccard vocab", "jaccard_vocab"),
                 ("agreement w/ target greedy", "token_agreement"),
                 ("cos to target native", "cos_to_target_native"),
                 ("cos to source native", "cos_to_source_native"))},
             ylabel="value", title="cross-model generation (source->target)")
    rep.text("\n## Samples\n")
    for pair, p, c, n_a, n_b in samples:
        rep.text(f"**{pair}**, prompt: `{p}`\n\n- cross: {c!r}\n- target native: {n_a!r}\n"
                 f"- source native: {n_b!r}\n")
    rep.results[name] = {"pairs": results, "prompts": prompts, "n_fit_texts": len(fit_texts),
                         "samples": [dict(zip(("pair", "prompt", "cross", "target_native",
                                               "source_native"), s)) for s in samples]}
    return rep
