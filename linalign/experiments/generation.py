"""Cross-model generation as the paper did it: chat-format fitting text, controls and ceilings.

For each ordered pair of causal models (target A's LM head, source B's transformer):

* fitting text: instruction/response conversations (``linalign.experiments.chatdata``), each
  model reading them in its own chat template, newlines kept; per-token final hidden states
  paired by character offsets within the shared content (``tokenpairs``); the map is fit by
  ``linalign.fit`` with the lambda policy (``cfg.gen_lam``, "auto" = exact 5-fold CV);
* teacher-forced on held-out conversations: how often the hybrid (B's state -> map -> A's head)
  picks A's own top-1 next token, and the next-token accuracy it keeps relative to A's own;
* generation: greedy, ``cfg.max_new_tokens`` tokens for ``cfg.n_gen`` held-out chat prompts,
  through ``linalign.generate.CrossDecoder``; cosine of the generated text to both models'
  native outputs beside the native-vs-native ceiling, positional token agreement with A's own
  greedy output and the common prefix length, a repetition rate;
* controls (``linalign.experiments.gencontrols``): the self-map (source = target, identity map)
  must reproduce native generation token for token; a perturbed self-map (the source's states
  rotated by a known angle and mixed with a known amount of noise) shows how every metric
  degrades with map quality.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
from absl import logging

from linalign.eval import pairing, textgen
from linalign.eval.report import Report
from linalign.experiments import chatdata
from linalign.generate.cross import common_prefix
from linalign.experiments import common as C
from linalign.experiments import tokenpairs as TP
from linalign.experiments.pairs import PairRunner

_SPECIAL = re.compile(r"^(<[^>]*>|\[[A-Za-z_]+\])$")
_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
DEGENERATE_REP = 0.5  # an output whose 4-gram repetition rate exceeds this counts as degenerate


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


def jaccard(ma, mb) -> float:
    va, sa, spa = vocab_for_jaccard(ma.tokenizer)
    vb, sb, spb = vocab_for_jaccard(mb.tokenizer)
    return pairing.jaccard_vocab_overlap(va, vb, sa, sb, spa, spb)


class Gen:
    """A generation's ids (EOS dropped) and text."""

    def __init__(self, ids, text):
        self.ids, self.text = list(ids), text


def native_all(model, prompts, max_new_tokens: int, batch_size: int = 16) -> list[Gen]:
    """The model's own greedy chat responses (KV-cached ``Decoder``, batched, left-padded)."""
    from linalign.generate.decode import GREEDY, Decoder, eos_ids_of

    chatdata.ensure_chat_template(model)
    tok, dec, eos = model.tokenizer, Decoder(model.module, model.params), set(eos_ids_of(model))
    out = []
    for c in range(0, len(prompts), batch_size):
        texts = [tok.apply_chat_template([{"role": "user", "content": p}]) for p in prompts[c:c + batch_size]]
        enc = tok.encode_batch(texts, add_special_tokens=False, padding_side="left")
        gen = dec.generate(enc.ids, enc.mask, max_new_tokens, tuple(eos), GREEDY, 0, tok.pad_id)
        for row in gen.rows():
            row = [t for t in row if t not in eos]
            out.append(Gen(row, tok.decode(row)))
    return out


def cross_all(source, target, amap, prompts, max_new_tokens: int, retokenize=None) -> list[Gen]:
    """Source transformer -> map -> target LM head, greedy, each prompt in the source's chat template.

    ``amap``: anything ``CrossDecoder`` takes (a saved map's path, an AffineMap, (W, b), a callable).
    ``retokenize``: as ``CrossDecoder.generate`` (None: re-encode unless the tokenizer is shared).
    """
    from linalign.generate.cross import CrossDecoder

    chatdata.ensure_chat_template(source)
    dec = CrossDecoder(source, amap, target)
    out, t0 = [], time.time()
    for i, p in enumerate(prompts):
        g = dec.generate(p, max_new_tokens, chat=True, retokenize=retokenize)
        out.append(Gen(g.target_ids, g.text))
        logging.info("cross %s -> %s: %d of %d prompts, %.0f s", source.name, target.name, i + 1, len(prompts),
                     time.time() - t0)
    return out


def top1_fn(model, chunk: int = 256):
    """h [n, d] -> A's top-1 token ids [n] through its LM head (chunked, jitted)."""
    import jax
    import jax.numpy as jnp

    mod = model.module
    f = jax.jit(lambda p, h: jnp.argmax(mod.apply({"params": p}, h, method=type(mod).lm_head), -1))

    def top1(h_nd):
        h_nd = np.asarray(h_nd, np.float32)
        out = []
        for s in range(0, len(h_nd), chunk):
            blk = h_nd[s:s + chunk]
            pad = chunk - len(blk)
            if pad:
                blk = np.concatenate([blk, np.zeros((pad, blk.shape[1]), np.float32)])
            out.append(np.asarray(f(model.params, blk))[: chunk - pad])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    return top1


def teacher_forced(native_top1, hybrid_top1, next_ids) -> dict:
    """Teacher-forced measures of a hybrid against the target's own head, on the same positions.

    Args:
      native_top1: [n] target's own top-1 next token at each position.
      hybrid_top1: [n] top-1 of the target head applied to the mapped source state.
      next_ids: [n] the token that follows in the text.

    Returns:
      top1_agreement: share of positions where hybrid and native top-1 agree;
      native_next_acc / hybrid_next_acc: share where each top-1 is the text's next token;
      next_acc_kept: hybrid_next_acc / native_next_acc; n: positions.
    """
    native_top1, hybrid_top1, next_ids = map(np.asarray, (native_top1, hybrid_top1, next_ids))
    if not (native_top1.shape == hybrid_top1.shape == next_ids.shape) or native_top1.size == 0:
        raise ValueError(f"teacher-forced arrays must be non-empty and alike, got {native_top1.shape}, "
                         f"{hybrid_top1.shape}, {next_ids.shape}")
    nat, hyb = float(np.mean(native_top1 == next_ids)), float(np.mean(hybrid_top1 == next_ids))
    return {"top1_agreement": float(np.mean(native_top1 == hybrid_top1)), "native_next_acc": nat,
            "hybrid_next_acc": hyb, "next_acc_kept": hyb / nat if nat > 0 else float("nan"),
            "n": int(native_top1.size)}


def gen_measures(outs, native_t, native_s, emb_out, emb_t, emb_s) -> dict:
    """Measures of generated outputs against the target's and the source's native outputs.

    Args:
      outs, native_t, native_s: lists of ``Gen`` (same prompts); native_t in the target's vocabulary.
      emb_out, emb_t, emb_s: [n, d] sentence embeddings of their texts.
    """
    rep = np.array([textgen.repetition_rate(o.ids) for o in outs])
    return {"token_agreement": float(np.mean([textgen.token_agreement(o.ids, n.ids)
                                              for o, n in zip(outs, native_t)])),
            "common_prefix_tokens": float(np.mean([common_prefix(o.ids, n.ids) for o, n in zip(outs, native_t)])),
            "identical_outputs": int(sum(o.ids == n.ids for o, n in zip(outs, native_t))),
            "cos_to_target_native": float(textgen.row_cosine(emb_out, emb_t).mean()),
            "cos_to_source_native": float(textgen.row_cosine(emb_out, emb_s).mean()),
            "repetition_rate": float(rep.mean()), "degenerate_share": float(np.mean(rep > DEGENERATE_REP)),
            "mean_tokens": float(np.mean([len(o.ids) for o in outs]))}


def encode_texts(cfg, texts) -> np.ndarray:
    """Sentence embeddings (``cfg.encoder``, mean pooling) of generated texts (empty -> " ")."""
    return np.asarray(C.embed(cfg.encoder, [t if t.strip() else " " for t in texts], cfg))


def _map_file(rep: Report, a: str, b: str):
    safe = lambda m: re.sub(r"[^A-Za-z0-9._-]+", "_", C.short(m))  # noqa: E731
    return rep.dir / "maps" / f"{safe(b)}_to_{safe(a)}.safetensors"


def one_pair(cfg, rep, a, b, data, lays, rows, native, prompts, emb_native) -> dict:
    """Fits source b -> target a on the fitting conversations, measures teacher-forced and generated."""
    ma, mb = C.load_model(a), C.load_model(b)
    t0 = time.time()
    pairs = TP.rows_pairs(rows[a], lays[a], rows[b], lays[b])
    fit = pairs.text < data.n_fit
    za, zb = TP.gather(rows[a], pairs, "a"), TP.gather(rows[b], pairs, "b")
    amap, lam = C.fit_map(zb[fit], za[fit], cfg.gen_lam)
    path = C.save_map(amap, _map_file(rep, a, b), source=b, target=a, layer=-1, pooling="per_token",
                      fit_text="chat conversations", fit_rows=int(fit.sum()))
    held = ~fit & pairs.predicts_response
    mapped = C.apply_map(amap, zb[held])
    top1 = top1_of(ma)
    tf = teacher_forced(top1(za[held]), top1(mapped), pairs.next_a[held])
    t_fit = time.time() - t0
    t0 = time.time()
    cross = cross_all(mb, ma, path, prompts, cfg.max_new_tokens)
    t_gen = time.time() - t0
    emb = encode_texts(cfg, [c.text for c in cross])
    g = gen_measures(cross, native[a], native[b], emb, emb_native[a], emb_native[b])
    entry = {"target": C.short(a), "source": C.short(b), "fit_rows": int(fit.sum()),
             "heldout_rows": int(held.sum()), "lam": lam, "lam_spec": amap.metadata.lam_spec,
             "lam_selection": amap.metadata.lam_selection, "map_train_r2": C.r2(C.apply_map(amap, zb[fit]), za[fit]),
             "heldout_r2": C.r2(mapped, za[held]),
             "exact_token_match_rate": TP.content_match_rate(rows[a], lays[a], rows[b], lays[b]),
             "exact_token_match_rate_reverse": TP.content_match_rate(rows[b], lays[b], rows[a], lays[a]),
             "jaccard_vocab": jaccard(ma, mb), "teacher_forced": tf, "generation": g,
             "fit_seconds": t_fit, "generation_seconds": t_gen, "map_file": os.path.relpath(path, rep.dir),
             "samples": [{"prompt": p, "cross": c.text, "target_native": na.text, "source_native": nb.text}
                         for p, c, na, nb in list(zip(prompts, cross, native[a], native[b]))[:3]]}
    logging.info("generation %s <- %s: %s", C.short(a), C.short(b),
                 {k: v for k, v in entry.items() if k != "samples"})
    return entry


_TOP1: dict = {}


def top1_of(model):
    """``top1_fn`` memoised per model (one compiled head per process)."""
    if model.fingerprint not in _TOP1:
        _TOP1[model.fingerprint] = top1_fn(model)
    return _TOP1[model.fingerprint]


def run_generation(cfg: C.StudyConfig, name: str = "generation") -> Report:
    """Both ordered pairs of the causal models, the native ceilings and the self-map controls."""
    from linalign.experiments import gencontrols, genreport

    rep = Report(name, cfg.out_root, "Cross-model generation through a per-token affine map, with controls")
    runner = PairRunner(rep, cfg)
    loaded = {m: runner.model(m, "load", lambda m=m: C.load_model(m)) for m in cfg.models}
    causal = [m for m in cfg.models if loaded[m] is None or loaded[m].is_causal]
    if len(causal) < 2:
        raise ValueError(f"cross-model generation needs two causal models; got {causal} among {list(cfg.models)}")
    t0 = time.time()
    data = TP.chat_data(cfg)
    t_data = time.time() - t0
    prompts = TP.eval_prompts(cfg, cfg.n_gen, exclude=[r["prompt"] for r in data.records])
    lays, rows, native, emb_native, t_native = {}, {}, {}, {}, {}
    for m in causal:
        lays[m] = runner.model(m, "chat layouts", lambda m=m: TP.layouts(C.load_model(m), data.records))
        rows[m] = runner.model(m, "per-token hidden states", lambda m=m: TP.token_rows(m, lays[m], cfg))
        t1 = time.time()
        native[m] = runner.model(m, "native generation",
                                 lambda m=m: native_all(C.load_model(m), prompts, cfg.max_new_tokens))
        t_native[m] = time.time() - t1
        if native[m] is not None:
            emb_native[m] = encode_texts(cfg, [g.text for g in native[m]])
    ok = [m for m in causal if runner.ok(m)]
    ceiling = {}
    if len(ok) >= 2:
        x, y = ok[0], ok[1]
        ceiling = {"models": [C.short(x), C.short(y)],
                   "cos_native_vs_native": float(textgen.row_cosine(emb_native[x], emb_native[y]).mean()),
                   "native": {C.short(m): gen_measures(native[m], native[m], native[m], emb_native[m],
                                                       emb_native[m], emb_native[m]) for m in ok}}
    setup = {"fit_conversations": data.n_fit, "heldout_conversations": data.n_heldout,
             "writer": C.short(data.writer), "response_tokens_mean": float(np.mean([r["n_tokens"] for r in data.records])),
             "finished_share": float(np.mean([r["finished"] for r in data.records])),
             "tokens_per_text": {C.short(m): float(np.mean(rows[m].lengths_b)) for m in ok},
             "texts_with_newline": {C.short(m): int(sum("\n" in lay.text for lay in lays[m])) for m in ok},
             "templates": {C.short(m): chatdata.ensure_chat_template(C.load_model(m)) for m in ok},
             "n_prompts": len(prompts), "data_seconds": t_data,
             "native_generation_seconds": {C.short(m): t for m, t in t_native.items()}}
    genreport.setup_text(rep, cfg, setup)
    results, controls = [], {}

    def render():
        genreport.render(rep, cfg, setup, ceiling, results, controls)
        rep.results[name] = {"setup": setup, "ceiling": ceiling, "pairs": results, "controls": controls,
                             "prompts": prompts,
                             "native_samples": {C.short(m): [g.text for g in native[m][:3]] for m in ok}}

    pairs = C.ordered_pairs(causal)
    runner.start(len(pairs) + 1)
    for a, b in pairs:
        out = runner.pair(f"{C.short(b)} -> {C.short(a)}",
                          lambda: one_pair(cfg, rep, a, b, data, lays, rows, native, prompts, emb_native),
                          needs=(a, b))
        if out is not None:
            results.append(out)
        runner.publish(render)
    self_model = TP.WRITER if TP.WRITER in ok else (ok[0] if ok else None)
    if self_model is not None:
        out = runner.pair(f"controls ({C.short(self_model)} self-map)",
                          lambda: gencontrols.run_controls(cfg, self_model, data, lays[self_model],
                                                           rows[self_model], native[self_model], prompts,
                                                           emb_native[self_model]), needs=(self_model,))
        if out is not None:
            controls.update(out)
    runner.publish(render)
    runner.finish(render)
    return rep
