"""Extraction throughput: linalign (JAX) against transformers (PyTorch) on the same model and texts.

Two measurements per model, both in float32, both pooling the final hidden state the same way
(mean for the encoder, last real token for the causal LM), PyTorch with torch.set_num_threads(2):

1. Identical inputs: BBC News sentences, batch sizes 1, 8 and 32; every batch padded to the same
   fixed length, and the very same id/mask arrays go to both. One warm-up pass each (JAX compiles
   there), then ``--repeats`` timed passes per side, alternating; the best pass of each side is
   reported. Reports real tokens/s and the ratio.
2. Mixed-length corpus end to end: titles, sentences and whole articles of BBC News shuffled
   together. linalign runs ``linalign.extract.extract`` (tokenization, length bucketing, jitted
   forward, pooling, restoring the order); transformers gets the same batch size with dynamic
   padding per batch in corpus order (its usual pipeline), tokenization included. linalign is
   timed cold (compilations included) and warm (second run in the same process).
3. Bare matmul: one float32 product of the model's MLP shapes at 32 x ``--fixed_length`` rows in
   both libraries, interleaved, best of 10 (GFLOP/s): the floor under the batch-32 comparison.
Also prints how far the two pooled outputs are apart (max abs difference, min cosine).

  PYTHONPATH=. python experiments/bench_extract.py          # MiniLM and SmolLM2
  python experiments/bench_extract.py --models=all-minilm-l6-v2 --mixed_texts=200

Writes results.json, results.md and results.png under --out.
"""

from __future__ import annotations

import io
import json
import pathlib
import time

import numpy as np
from absl import app, flags, logging

from linalign.atomic import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["all-minilm-l6-v2", "smollm2-135m-instruct"], "Asset names or paths.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes for the identical-input runs.")
flags.DEFINE_integer("fixed_texts", 64, "Texts per batch size in the identical-input runs.")
flags.DEFINE_integer("repeats", 3, "Timed passes per side in the identical-input runs (best reported).")
flags.DEFINE_integer("fixed_length", 64, "Padded length of the identical-input batches.")
flags.DEFINE_integer("mixed_texts", 512, "Texts in the mixed-length corpus.")
flags.DEFINE_integer("mixed_batch", 32, "Batch size for the mixed-length corpus.")
flags.DEFINE_integer("max_length", 256, "Token limit for the mixed-length corpus.")
flags.DEFINE_string("out", "results/bench_extract", "Output directory.")


def torch_reference(model, src: pathlib.Path):
    """The transformers model for ``src``: AutoModel for directories, the base model of a GGUF."""
    import transformers

    if src.suffix == ".gguf":
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, torch_dtype="float32")
        return lm.model.eval()
    return transformers.AutoModel.from_pretrained(str(src), torch_dtype="float32").eval()


def torch_pool(h, mask, pooling):
    import torch

    m = mask.to(h.dtype)
    if pooling == "mean":
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    pos = torch.arange(mask.shape[1])
    idx = torch.where(mask > 0, pos, -1).argmax(1) if pooling == "last" else (mask > 0).int().argmax(1)
    return h[torch.arange(h.shape[0]), idx]


def cosine_min(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def bench_fixed(m, ref, texts, batch_size, length, pooling):
    """Same padded arrays to both; returns dict of tokens/s and agreement."""
    import jax
    import torch

    from linalign.models import base

    if len(texts) < batch_size:
        texts = (list(texts) * batch_size)[:batch_size]
    enc = m.tokenizer.encode_batch(texts, max_length=length, truncation="silent", pad_to=length)
    n = (len(texts) // batch_size) * batch_size
    batches = [(enc.ids[i:i + batch_size], enc.mask[i:i + batch_size]) for i in range(0, n, batch_size)]
    tokens = int(enc.mask[:n].sum())
    kw = {"return_logits": False} if m.is_causal else {}
    fwd = jax.jit(lambda p, i, k: base.pool(m.module.apply({"params": p}, i, k, **kw).last_hidden_state,
                                            k, pooling))
    fwd(m.params, *batches[0]).block_until_ready()  # compile
    tb = [(torch.tensor(i, dtype=torch.long), torch.tensor(k, dtype=torch.long)) for i, k in batches]
    t_ours, t_ref = [], []
    with torch.no_grad():
        ref(input_ids=tb[0][0], attention_mask=tb[0][1])  # warm-up
        # Passes alternate between the two sides; the best pass of each is reported, so a
        # burst of load from other processes on the shared machine hits both alike.
        for _ in range(FLAGS.repeats):
            t = time.perf_counter()
            ours = [np.asarray(fwd(m.params, i, k)) for i, k in batches]
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            theirs = [torch_pool(ref(input_ids=i, attention_mask=k).last_hidden_state, k, pooling).numpy()
                      for i, k in tb]
            t_ref.append(time.perf_counter() - t)
    t_ours, t_ref = min(t_ours), min(t_ref)
    a, b = np.concatenate(ours), np.concatenate(theirs)
    return {"batch_size": batch_size, "tokens": tokens, "linalign_tok_s": tokens / t_ours,
            "transformers_tok_s": tokens / t_ref, "ratio": t_ref / t_ours,
            "max_abs_diff": float(np.abs(a - b).max()), "min_cosine": cosine_min(a, b)}


def bench_mixed(m, ref, texts, batch_size, max_length, pooling):
    import torch

    from linalign import extract

    tokens = int(m.tokenizer.token_lengths(texts, max_length=max_length).sum())
    runs = []
    for _ in range(2):  # cold (compiles) then warm
        t = time.perf_counter()
        ours = extract.extract(m, texts, pooling=pooling, max_length=max_length,
                               batch_size=batch_size, truncation="silent", progress=False)
        runs.append(time.perf_counter() - t)
    tok = m.tokenizer
    t = time.perf_counter()
    theirs = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            # Dynamic padding to the longest text of each batch, in corpus order.
            enc = tok.encode_batch(texts[s:s + batch_size], max_length=max_length, truncation="silent")
            i = torch.tensor(enc.ids, dtype=torch.long)
            k = torch.tensor(enc.mask, dtype=torch.long)
            theirs.append(torch_pool(ref(input_ids=i, attention_mask=k).last_hidden_state, k, pooling).numpy())
    t_ref = time.perf_counter() - t
    b = np.concatenate(theirs)
    return {"texts": len(texts), "tokens": tokens, "batch_size": batch_size,
            "linalign_cold_tok_s": tokens / runs[0], "linalign_warm_tok_s": tokens / runs[1],
            "transformers_tok_s": tokens / t_ref, "ratio_cold": t_ref / runs[0],
            "ratio_warm": t_ref / runs[1], "max_abs_diff": float(np.abs(ours - b).max()),
            "min_cosine": cosine_min(ours, b)}


def projection_shapes(cfg) -> list[tuple[int, int]]:
    """(in, out) of every weight matrix product in one layer of a BERT/MPNet or decoder config."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    if hasattr(cfg, "num_kv_heads"):  # decoder: q, k, v, o, gate, up, down
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        return [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]
    return [(d, d), (d, d), (d, d), (d, d), (d, f), (f, d)]  # encoder: q, k, v, o, in, out


def bench_layer_gemms(cfg, rows: int, repeats: int = 5) -> dict:
    """Only the model's weight products, all layers, ``rows`` tokens, in JAX and in torch.

    Each layer's products feed the next layer's input (nothing is dead code); the two sides are
    timed interleaved, best of ``repeats``. Both sides spend most of an identical-input forward
    in exactly these products, so this ratio is the floor the end-to-end ratio sits on; the
    difference is everything else (attention, norms, activations).
    """
    import jax
    import jax.numpy as jnp
    import torch

    shapes = projection_shapes(cfg)
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal(s, dtype=np.float32) / np.sqrt(s[0])).astype(np.float32) for s in shapes]
    x0 = rng.standard_normal((rows, cfg.hidden_size), dtype=np.float32)

    def layers(x, ws):
        # One attention block's products and one MLP's per layer; every output reaches the
        # result (k and v through a cheap mean), so neither side can skip work.
        for _ in range(cfg.num_layers):
            q, k, v = x @ ws[0], x @ ws[1], x @ ws[2]
            x = x + 1e-3 * (q @ ws[3]) + 1e-3 * (k.mean() + v.mean())
            if len(ws) == 7:  # gated MLP
                x = x + 1e-3 * ((x @ ws[4] + x @ ws[5]) @ ws[6])
            else:
                x = x + 1e-3 * ((x @ ws[4]) @ ws[5])
        return x

    jf = jax.jit(layers)
    jx, jw = jnp.asarray(x0), [jnp.asarray(w) for w in ws]
    tx, tw = torch.from_numpy(x0), [torch.from_numpy(w) for w in ws]
    jf(jx, jw).block_until_ready()
    t_j, t_t = [], []
    with torch.no_grad():
        layers(tx, tw)
        for _ in range(repeats):
            t = time.perf_counter()
            jf(jx, jw).block_until_ready()
            t_j.append(time.perf_counter() - t)
            t = time.perf_counter()
            layers(tx, tw)
            t_t.append(time.perf_counter() - t)
    flop = 2.0 * rows * cfg.num_layers * sum(a * b for a, b in shapes)
    return {"rows": rows, "jax_gflops": flop / min(t_j) / 1e9, "torch_gflops": flop / min(t_t) / 1e9,
            "ratio": min(t_t) / min(t_j)}


def mixed_corpus(n: int, seed: int = 0) -> list[str]:
    """Titles, sentences and whole articles of BBC News, shuffled together."""
    from linalign import data

    rng = np.random.default_rng(seed)
    parts = [data.load_corpus("bbc_titles").texts, data.load_corpus("bbc_sentences").texts,
             data.load_corpus("bbc_news").texts]
    picks = []
    for texts, k in zip(parts, (n // 3, n // 3, n - 2 * (n // 3))):
        picks += [texts[i] for i in rng.choice(len(texts), size=k, replace=False)]
    rng.shuffle(picks)
    return picks


def main(argv):
    del argv
    import torch

    from linalign import checkpoints, data

    torch.set_num_threads(2)
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    sentences = data.load_corpus("bbc_sentences").texts
    rng = np.random.default_rng(1)
    fixed_texts = [sentences[i] for i in rng.choice(len(sentences), FLAGS.fixed_texts, replace=False)]
    mixed = mixed_corpus(FLAGS.mixed_texts)
    results = {}
    for name in FLAGS.models:
        t = time.perf_counter()
        m = checkpoints.load(name)
        t_load = time.perf_counter() - t
        ref = torch_reference(m, pathlib.Path(m.source))
        pooling = m.default_pooling
        logging.info("%s: pooling=%s, linalign load %.1fs", name, pooling, t_load)
        rows = [bench_fixed(m, ref, fixed_texts, int(b), FLAGS.fixed_length, pooling)
                for b in FLAGS.batch_sizes]
        for r in rows:
            r["gemms"] = bench_layer_gemms(m.module.config, r["batch_size"] * FLAGS.fixed_length)
            print(f"{name} batch {r['batch_size']:>3}: linalign {r['linalign_tok_s']:8.0f} tok/s, "
                  f"transformers {r['transformers_tok_s']:8.0f} tok/s, ratio {r['ratio']:.2f}x "
                  f"(max |diff| {r['max_abs_diff']:.1e}, min cos {r['min_cosine']:.6f}); weight "
                  f"products alone: jax {r['gemms']['jax_gflops']:.0f} / torch "
                  f"{r['gemms']['torch_gflops']:.0f} GFLOP/s = {r['gemms']['ratio']:.2f}x", flush=True)
        mx = bench_mixed(m, ref, mixed, FLAGS.mixed_batch, FLAGS.max_length, pooling)
        print(f"{name} mixed corpus ({mx['texts']} texts, {mx['tokens']} tokens, batch "
              f"{mx['batch_size']}): linalign cold {mx['linalign_cold_tok_s']:.0f} / warm "
              f"{mx['linalign_warm_tok_s']:.0f} tok/s, transformers {mx['transformers_tok_s']:.0f} "
              f"tok/s, ratio cold {mx['ratio_cold']:.2f}x warm {mx['ratio_warm']:.2f}x "
              f"(max |diff| {mx['max_abs_diff']:.1e}, min cos {mx['min_cosine']:.6f})", flush=True)
        results[name] = {"pooling": pooling, "fixed": rows, "mixed": mx, "load_s": t_load}
        del ref
    atomic_write(out / "results.json", json.dumps(results, indent=1))
    lines = ["| model | setting | linalign tok/s | transformers tok/s | ratio | weight products alone: "
             "JAX / torch GFLOP/s (ratio) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for f in r["fixed"]:
            g = f["gemms"]
            lines.append(f"| {name} | identical inputs, batch {f['batch_size']} | "
                         f"{f['linalign_tok_s']:.0f} | {f['transformers_tok_s']:.0f} | {f['ratio']:.2f}x | "
                         f"{g['jax_gflops']:.0f} / {g['torch_gflops']:.0f} ({g['ratio']:.2f}x) |")
        mx = r["mixed"]
        lines.append(f"| {name} | mixed corpus, batch {mx['batch_size']} (cold / warm) | "
                     f"{mx['linalign_cold_tok_s']:.0f} / {mx['linalign_warm_tok_s']:.0f} | "
                     f"{mx['transformers_tok_s']:.0f} | {mx['ratio_cold']:.2f}x / {mx['ratio_warm']:.2f}x | |")
    atomic_write(out / "results.md", "\n".join(lines) + "\n")
    _plot(results, out / "results.png")
    print("\n".join(lines))


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        labels = [f"b={f['batch_size']}" for f in r["fixed"]] + ["mixed (warm)"]
        ours = [f["linalign_tok_s"] for f in r["fixed"]] + [r["mixed"]["linalign_warm_tok_s"]]
        theirs = [f["transformers_tok_s"] for f in r["fixed"]] + [r["mixed"]["transformers_tok_s"]]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, ours, 0.4, label="linalign (JAX)")
        ax.bar(x + 0.2, theirs, 0.4, label="transformers (PyTorch)")
        ax.set_xticks(x, labels)
        ax.set_ylabel("tokens / s")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
    atomic_write(path, png.getvalue())


if __name__ == "__main__":
    app.run(main)
