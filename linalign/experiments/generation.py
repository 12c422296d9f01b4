"""Cross-model generation: source transformer -> per-token affine map -> target LM head."""

from __future__ import annotations

import re

import numpy as np
from absl import logging

from linalign.eval import pairing, textgen
from linalign.eval.report import Report
from linalign.experiments import common as C
from linalign.experiments.pairs import PairRunner

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
    """Source transformer -> map -> target LM head, greedy (``generate_from_hidden``).

    ``amap``: anything ``CrossDecoder`` takes (a saved map's path, an AffineMap, (W, b)).
    """
    from linalign.generate.cross import CrossDecoder

    dec = CrossDecoder(source, amap, target)
    out = []
    for p in prompts:
        g = dec.generate(p, max_new_tokens, False)
        out.append(_Gen(g.target_ids, g.text))
    return out


def _fit_texts(cfg: C.StudyConfig):
    """Texts whose per-token states fit the maps, drawn evenly from ``cfg.gen_corpora``."""
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
    return fit_texts, used


def _map_file(rep: Report, a: str, b: str):
    safe = lambda m: re.sub(r"[^A-Za-z0-9._-]+", "_", C.short(m))  # noqa: E731
    return rep.dir / "maps" / f"{safe(b)}_to_{safe(a)}.safetensors"


def _one_pair(cfg, rep, a, b, rows, native, prompts, fit_texts):
    """Fits the map source b -> target a, generates through it, measures; returns (entry, samples)."""
    ma, mb = C.load_model(a), C.load_model(b)
    za, zb = paired_token_states(rows[a], rows[b])
    amap, lam = C.fit_map(zb, za, cfg.gen_lam)
    path = C.save_map(amap, _map_file(rep, a, b), source=b, target=a, layer=-1, pooling="per_token")
    r2_fit = C.r2(C.apply_map(amap, zb), za)
    va, sa, spa = vocab_for_jaccard(ma.tokenizer)
    vb, sb, spb = vocab_for_jaccard(mb.tokenizer)
    jac = pairing.jaccard_vocab_overlap(va, vb, sa, sb, spa, spb)
    emr = match_rate(fit_texts, rows[a], rows[b])
    cross = _cross_all(mb, ma, path, prompts, cfg.max_new_tokens)
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
             "n_token_pairs": int(len(za)), "lam": lam, "lam_spec": amap.metadata.lam_spec,
             "lam_selection": amap.metadata.lam_selection,
             "map_file": str(path.relative_to(rep.dir))}
    samples = [{"pair": f"{C.short(b)}->{C.short(a)}", "prompt": p, "cross": c.text,
                "target_native": n_a.text, "source_native": n_b.text}
               for p, c, n_a, n_b in list(zip(prompts, cross, native[a], native[b]))[:3]]
    logging.info("generation %s<-%s: %s", C.short(a), C.short(b), entry)
    return entry, samples


def run_generation(cfg: C.StudyConfig, name: str = "generation") -> Report:
    """Every ordered pair of the causal models: fit a per-token map, generate, measure.

    A model that fails to load, embed or generate, or a pair that fails (for example its solve
    raising), is recorded in the report and the others go on; the report is rewritten after
    each pair (``linalign.experiments.pairs``). Each pair's map is saved under maps/.
    """
    rep = Report(name, cfg.out_root, "Cross-model generation through a per-token affine map")
    runner = PairRunner(rep, cfg)
    loaded = {m: runner.model(m, "load", lambda m=m: C.load_model(m)) for m in cfg.models}
    # A model that failed to load stays in the pairs (they are listed as skipped).
    causal = [m for m in cfg.models if loaded[m] is None or loaded[m].is_causal]
    if len(causal) < 2:
        raise ValueError(f"cross-model generation needs two causal models; got {causal} among {list(cfg.models)}")
    fit_texts, used = _fit_texts(cfg)
    prompts = list(PROMPTS[: cfg.n_gen])
    rows, native = {}, {}
    for m in causal:
        rows[m] = runner.model(m, "per-token hidden states",
                               lambda m=m: C.embed(m, fit_texts, cfg, per_token=True))
        native[m] = runner.model(m, "native generation",
                                 lambda m=m: _greedy_all(C.load_model(m), prompts, cfg.max_new_tokens))
        if native[m]:
            logging.info("native %s: %r", C.short(m), native[m][0].text)
    rep.text(f"Map fit on per-token final hidden states of {len(fit_texts)} texts ({', '.join(used)}; "
             f"max_length {cfg.max_length}), tokens paired by character offsets (target token i "
             f"-> first source token whose span ends at or after i's end). Ridge lambda spec "
             f"`{cfg.gen_lam}` (the paper's is an absolute 1e-4), resolved by linalign's lambda "
             f"policy; the solve is in float64. Greedy decoding, {cfg.max_new_tokens} new tokens, "
             f"{len(prompts)} plain-text prompts. Cosines use {C.short(cfg.encoder)} mean-pooled "
             "embeddings of the generated text (prompt excluded). Each pair's map is in maps/.\n")
    results, samples = [], []

    def render():
        _render(rep, results, samples)
        rep.results[name] = {"pairs": results, "prompts": prompts, "n_fit_texts": len(fit_texts),
                             "samples": samples}

    pairs = C.ordered_pairs(causal)
    runner.start(len(pairs))
    for a, b in pairs:
        out = runner.pair(f"{C.short(b)} -> {C.short(a)}",
                          lambda: _one_pair(cfg, rep, a, b, rows, native, prompts, fit_texts), needs=(a, b))
        if out is not None:
            results.append(out[0])
            samples += out[1]
        runner.publish(render)
    runner.finish(render)
    return rep


def _render(rep: Report, results, samples) -> None:
    table = [[r["target"], r["source"], r["exact_token_match_rate"], r["jaccard_vocab"],
              r["token_agreement"], r["target_ppl_cross"], r["target_ppl_native"],
              r["cos_to_target_native"], r["cos_to_source_native"], r["map_train_r2"]] for r in results]
    rep.table(["target A (LM head)", "source B (transformer)", "exact token match", "Jaccard vocab",
               "agreement w/ A greedy", "A ppl of cross text", "A ppl of own text",
               "cos to A native", "cos to B native", "map train R2"], table,
              caption="Cross-model generation")
    rep.text("Paper, for reference: cross-model generation works for some pairs only; quality is "
             "predicted by the exact token match rate (r = 0.898 over 23 pairs) and Jaccard vocabulary "
             "overlap (r = 0.822); pairs with exact match above 0.7 succeed, tiny source models fail; "
             "good outputs have cosine above 0.7 to both native outputs, bad ones below 0.3. Maps "
             "there were fit on 4,000 instruction examples; here on a few hundred short texts.\n")
    if results:
        groups = [f"{r['source']}->{r['target']}" for r in results]
        rep.bars("generation_measures", groups,
                 {k: [r[key] for r in results] for k, key in (
                     ("exact token match", "exact_token_match_rate"), ("Jaccard vocab", "jaccard_vocab"),
                     ("agreement w/ target greedy", "token_agreement"),
                     ("cos to target native", "cos_to_target_native"),
                     ("cos to source native", "cos_to_source_native"))},
                 ylabel="value", title="cross-model generation (source->target)")
    rep.text("\n## Samples\n")
    for s in samples:
        rep.text(f"**{s['pair']}**, prompt: `{s['prompt']}`\n\n- cross: {s['cross']!r}\n"
                 f"- target native: {s['target_native']!r}\n- source native: {s['source_native']!r}\n")
