"""The generation study's report: setup, definitions, tables, the perturbed-map curve, samples."""

from __future__ import annotations

from linalign.experiments.gencontrols import LEVELS

DEFINITIONS = """\
**Definitions.**
- *Teacher-forced top-1 agreement*: on held-out conversations, at every target token whose next
  token lies in the response, the share of positions where the target head applied to the mapped
  source state (the hybrid) and applied to the target's own state give the same top-1 token.
- *Next-token accuracy kept*: hybrid next-token accuracy / native next-token accuracy (top-1 equal
  to the token that follows in the text, same positions).
- *Token agreement*: positional; share of positions t < len(native) where the generated token
  equals the target's own greedy token at t; it collapses after the first divergence, so the
  *common prefix* (tokens before the first divergence) is given beside it.
- *Cosine to a native output*: cosine of sentence embeddings (MiniLM, mean pooling) of the
  generated text and that model's own greedy answer to the same prompt, averaged over prompts.
  *Native-vs-native* is the same measure between the two models' own answers: an output cannot
  be expected to be closer to both natives than they are to each other.
- *Identity self-map*: source = target, W = I, b = 0; the generated ids are fed back as they are
  (one shared tokenizer), so it must equal native greedy decoding. *Text re-tokenized*: the same,
  but every step decodes the generated ids to text and re-encodes it, as a pair with two
  tokenizers must; where the model wrote a non-canonical split (two "\n" tokens re-read as one
  "\n\n"), the context changes and the output may diverge: re-tokenization's own cost.
- *Repetition rate*: share of an output's token 4-grams that already occurred earlier in it,
  averaged over outputs; *degenerate share*: outputs whose repetition rate exceeds 0.5.
- *Exact token match rate* (A counted): for each conversation, the user text and the response in
  content coordinates; every token of A's (whitespace-trimmed) span that is also the trimmed span
  of some token of B, divided by A's tokens, pooled over all conversations. It is asymmetric; both
  directions and their mean are given.
- *Jaccard vocabulary overlap*: |S_A ∩ S_B| / |S_A ∪ S_B| where S_X is the set of surface strings
  of X's vocabulary (byte-level "Ġ" and SentencePiece "▁" markers both read as a leading space,
  special tokens left out).
"""


def setup_text(rep, cfg, s: dict) -> None:
    tpl = "; ".join(f"{k}: {v}" for k, v in s["templates"].items())
    rep.text(
        f"Fitting text: {s['fit_conversations']} instruction/response conversations "
        f"(+{s['heldout_conversations']} held out for teacher-forced measures). Prompts are instructions "
        "written around passages of the bundled corpora (BBC News articles with their paragraph breaks, "
        "fortunes, Jane Austen passages); responses were written by "
        f"{s['writer']} itself (sampled, temperature 0.7, top-p 0.9, at most 128 tokens; mean "
        f"{s['response_tokens_mean']:.0f} tokens, {100 * s['finished_share']:.0f}% ended with EOS). Each model "
        f"reads every conversation in its own chat template ({tpl}); newlines are kept "
        f"(texts with a newline: {s['texts_with_newline']}), mean tokens per conversation "
        f"{ {k: round(v) for k, v in s['tokens_per_text'].items()} }. Tokens are paired by character "
        "offsets within the shared content (user text and response), plus the last token of each "
        "template piece (the token that reads the assistant-turn opener predicts the first response "
        f"token). Lambda spec `{cfg.gen_lam}` through linalign's lambda policy (\"auto\" = exact "
        f"5-fold CV from per-fold statistics), float64 solve. Generation: greedy, {cfg.max_new_tokens} new "
        f"tokens, {s['n_prompts']} held-out prompts of the same kind in each source's chat template.\n")
    rep.text("Gemma-3-270M as bundled is the base (pretrained) model and its GGUF carries no chat "
             "template; it reads a plain `Question: ...\\nAnswer: ...` layout (with Gemma 3's "
             "`<start_of_turn>` layout the base model answered off topic in a first try).\n")


def _row(label, e, tf_key="teacher_forced", gen_key="generation"):
    tf, g = e.get(tf_key) or {}, e.get(gen_key) or {}
    return [label, e.get("heldout_r2"), tf.get("top1_agreement"), tf.get("next_acc_kept"),
            g.get("token_agreement"), g.get("common_prefix_tokens"), g.get("identical_outputs"),
            g.get("cos_to_target_native"), g.get("cos_to_source_native"), g.get("repetition_rate"),
            g.get("degenerate_share")]


HEAD = ["map (source -> target)", "held-out R2", "TF top-1 agreement", "TF next-token acc kept",
        "gen token agreement", "common prefix (tokens)", "identical outputs", "cos to target native",
        "cos to source native", "repetition rate", "degenerate share"]


def render(rep, cfg, setup, ceiling, results, controls) -> None:
    rows = [_row(f"{r['source']} -> {r['target']}", r) for r in results]
    if controls.get("identity"):
        rows.append(_row(f"control: {controls['model']} identity self-map", controls["identity"]))
    if controls.get("identity_retokenized"):
        rows.append(_row(f"control: {controls['model']} identity self-map, text re-tokenized",
                         controls["identity_retokenized"]))
    for p in controls.get("perturbed", []):
        rows.append(_row(f"control: {controls['model']} self-map, {p['degrees']:.0f} deg, noise {p['sigma']}", p))
    rep.table(HEAD, rows, caption="Cross-model generation, the real pair and the controls")
    if ceiling:
        x, y = ceiling["models"]
        nat = ceiling["native"]
        rep.text(f"Native-vs-native ceiling: cosine between {x}'s and {y}'s own answers = "
                 f"**{ceiling['cos_native_vs_native']:.3f}**. Native repetition rate: "
                 + ", ".join(f"{k} {v['repetition_rate']:.3f} (degenerate share {v['degenerate_share']:.2f})"
                             for k, v in nat.items()) + ".\n")
    if results:
        rep.table(["source -> target", "fit rows", "held-out TF rows", "lambda", "selection", "train R2",
                   "exact match (target counted)", "exact match (source counted)", "Jaccard vocab",
                   "native next-token acc", "hybrid next-token acc", "fit s", "generation s"],
                  [[f"{r['source']} -> {r['target']}", r["fit_rows"], r["heldout_rows"], r["lam"],
                    r["lam_selection"], r["map_train_r2"], r["exact_token_match_rate"],
                    r["exact_token_match_rate_reverse"], r["jaccard_vocab"],
                    r["teacher_forced"]["native_next_acc"], r["teacher_forced"]["hybrid_next_acc"],
                    r["fit_seconds"], r["generation_seconds"]] for r in results],
                  caption="Maps and predictors")
    rep.text(DEFINITIONS)
    pert = controls.get("perturbed", [])
    if pert:
        pts = sorted(pert, key=lambda p: -p["heldout_r2"])
        x = [p["heldout_r2"] for p in pts]
        ys = {"TF top-1 agreement": [p["teacher_forced"]["top1_agreement"] for p in pts],
              "TF next-token acc kept": [p["teacher_forced"]["next_acc_kept"] for p in pts],
              "gen token agreement": [p["generation"]["token_agreement"] for p in pts],
              "cos to native": [p["generation"]["cos_to_target_native"] for p in pts],
              "repetition rate": [p["generation"]["repetition_rate"] for p in pts]}
        rep.text(f"\n## Perturbed self-map: each metric against map quality\n\n{controls['model']} -> itself; "
                 f"levels (degrees, noise) {list(LEVELS)}; generation on the first "
                 f"{controls.get('n_prompts_perturbed')} prompts. The real pairs' held-out R^2 is "
                 + ", ".join(f"{r['source']}->{r['target']} {r['heldout_r2']:.3f}" for r in results)
                 + ": read their metrics against the curve at that R^2.\n")
        rep.curves("perturbed_selfmap", x, ys, xlabel="held-out R^2 of the perturbed self-map",
                   ylabel="value", title=f"{controls['model']} self-map perturbed by known amounts")
    if results:
        rep.text("\n## Samples\n")
        for r in results:
            for s in r["samples"]:
                rep.text(f"**{r['source']} -> {r['target']}**, prompt: `{s['prompt'][:120]!r}...`\n\n"
                         f"- cross: {s['cross']!r}\n- target native: {s['target_native']!r}\n"
                         f"- source native: {s['source_native']!r}\n")
