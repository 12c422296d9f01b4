"""Greedy decoding speed: linalign's jitted KV-cached decoder vs transformers' generate.

Same model (SmolLM2-135M-Instruct GGUF, dequantized to float32 on both sides), same chat prompt,
same number of new tokens (EOS disabled on both sides so both produce exactly that many), batch 1,
torch limited to ``--threads`` threads. linalign's time excludes the one-off compilation (reported
separately); warm runs alternate between the two sides and the best of ``--repeats`` of each is
reported.

    PYTHONPATH=. python experiments/bench_generate.py --new_tokens=64 --threads=2 --repeats=5 \
        --out=docs/results/bench_generate

Prints tokens/s for both and the ratio (target >= 1.2x).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m-instruct", "asset name or path of a GGUF file")
flags.DEFINE_string("prompt", "What is the capital of France?", "user message (chat template applied)")
flags.DEFINE_integer("new_tokens", 64, "tokens to generate")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
flags.DEFINE_integer("repeats", 3, "timed runs per side (best is reported)")
flags.DEFINE_string("out", None, "optional output directory: results.json, results.md, results.png")


def setup_linalign(path, prompt, n):
    """Loads and compiles; returns (run, compile_s, prompt ids, tokenizer). ``run()`` -> tokens."""
    import jax
    import numpy as np

    from linalign import checkpoints
    from linalign.generate import decode

    model = checkpoints.load(str(path))
    tok = model.tokenizer
    ids = np.asarray([tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]),
                                 add_special_tokens=False)])
    dec = decode.Decoder(model.module, model.params)
    t0 = time.perf_counter()
    dec.generate(ids, max_new_tokens=n, eos_ids=())
    compile_s = time.perf_counter() - t0

    def run():
        gen = dec.generate(ids, max_new_tokens=n, eos_ids=())
        jax.block_until_ready(gen.tokens)
        return gen.tokens[0].tolist()

    return run, compile_s, ids, tok


def setup_transformers(path, ids, n, threads):
    """Loads and warms transformers' model; returns ``run()`` -> new tokens."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    x = torch.tensor(ids)
    # No EOS on either side: both decode exactly n tokens and, past the answer, keep predicting
    # after the EOS token instead of stopping, so the token streams stay comparable.
    model.generation_config.eos_token_id = None
    kw = dict(max_new_tokens=n, do_sample=False, pad_token_id=0)

    def run():
        with torch.no_grad():
            return model.generate(x, **kw)[0, ids.shape[1]:].tolist()

    run()  # warm-up
    return run


def main(argv):
    del argv
    import pathlib

    from linalign.checkpoints import resolve

    path = pathlib.Path(resolve(FLAGS.model))
    n = FLAGS.new_tokens
    logging.info("linalign: loading and compiling")
    ours_run, compile_s, ids, tok = setup_linalign(path, FLAGS.prompt, n)
    logging.info("transformers: loading %s (slow: dequantizes in torch)", path.name)
    theirs_run = setup_transformers(path, ids, n, FLAGS.threads)
    # Runs alternate between the two sides and the best of each is reported, so a burst of load
    # from other processes on a shared machine hits both alike.
    t_ours, t_ref, ours = [], [], None
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        again = ours_run()
        t_ours.append(time.perf_counter() - t0)
        if ours is not None and again != ours:
            raise RuntimeError("linalign's greedy tokens changed between runs")
        ours = again
        t0 = time.perf_counter()
        theirs = theirs_run()
        t_ref.append(time.perf_counter() - t0)
    runs = {"linalign_tok_s": [n / t for t in t_ours], "transformers_tok_s": [n / t for t in t_ref]}
    t_ours, t_ref = min(t_ours), min(t_ref)
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    res = {
        "model": path.name, "prompt_tokens": int(ids.shape[1]), "new_tokens": n, "torch_threads": FLAGS.threads,
        "linalign_tok_s": n / t_ours, "transformers_tok_s": n / t_ref, "ratio": t_ref / t_ours,
        "linalign_compile_s": compile_s, "identical_prefix_tokens": same, "load_avg_1m": os.getloadavg()[0],
        "linalign_text": tok.decode(ours), "runs": runs,
        "command": "PYTHONPATH=. python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
    }
    print(f"linalign      {res['linalign_tok_s']:8.1f} tok/s  (compile {compile_s:.1f} s, excluded)")
    print(f"transformers  {res['transformers_tok_s']:8.1f} tok/s  (torch threads {FLAGS.threads})")
    print(f"ratio         {res['ratio']:8.2f}x   identical first {same}/{n} tokens; "
          f"load avg {res['load_avg_1m']:.1f} (shared machine)")
    if FLAGS.out:
        write_results(pathlib.Path(FLAGS.out), res)


def write_results(out, res) -> None:
    """results.json, a one-row results.md and results.png (tokens/s of every alternating run)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linalign.atomic import atomic_write

    md = ("| model | prompt tokens | new tokens | linalign tok/s | transformers tok/s | ratio | "
          "identical tokens |\n|---|---|---|---|---|---|---|\n"
          f"| {res['model']} | {res['prompt_tokens']} | {res['new_tokens']} | {res['linalign_tok_s']:.1f} | "
          f"{res['transformers_tok_s']:.1f} | {res['ratio']:.2f}x | "
          f"{res['identical_prefix_tokens']}/{res['new_tokens']} |\n\n"
          f"`{res['command']}` (float32, batch 1, torch on {res['torch_threads']} threads, runs alternating "
          f"between the two sides, best of {len(res['runs']['linalign_tok_s'])} each, compile excluded)\n")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in (("linalign_tok_s", "linalign (JAX)"), ("transformers_tok_s", "transformers (PyTorch)")):
        ax.plot(range(1, len(res["runs"][key]) + 1), res["runs"][key], "o-", label=label)
    ax.set_xticks(range(1, len(res["runs"]["linalign_tok_s"]) + 1))
    ax.set_xlabel("run (the two sides alternate)")
    ax.set_ylabel("new tokens / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"greedy decoding, batch 1: best of each side {res['ratio']:.2f}x")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
    atomic_write(out / "results.json", json.dumps(res, indent=2))
    atomic_write(out / "results.md", md)
    atomic_write(out / "results.png", png.getvalue())


if __name__ == "__main__":
    app.run(main)
