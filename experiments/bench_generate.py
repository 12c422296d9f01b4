"""Greedy decoding speed: linalign's jitted KV-cached decoder vs transformers' generate.

Same model (SmolLM2-135M-Instruct GGUF, dequantized to float32 on both sides), same chat prompt,
same number of new tokens (EOS disabled on both sides so both produce exactly that many), batch 1,
torch limited to ``--threads`` threads. linalign's time excludes the one-off compilation (reported
separately); warm runs alternate between the two sides and the best of ``--repeats`` of each is
reported.

    PYTHONPATH=. python experiments/bench_generate.py --new_tokens=64 --threads=2

Prints tokens/s for both and the ratio (target >= 1.2x).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m-instruct", "asset name or path of a GGUF file")
flags.DEFINE_string("prompt", "What is the capital of France?", "user message (chat template applied)")
flags.DEFINE_integer("new_tokens", 64, "tokens to generate")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
flags.DEFINE_integer("repeats", 3, "timed runs per side (best is reported)")
flags.DEFINE_string("out_json", None, "optional path for the numbers as JSON")


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
    t_ours, t_ref = min(t_ours), min(t_ref)
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    res = {
        "model": path.name, "prompt_tokens": int(ids.shape[1]), "new_tokens": n, "torch_threads": FLAGS.threads,
        "linalign_tok_s": n / t_ours, "transformers_tok_s": n / t_ref, "ratio": t_ref / t_ours,
        "linalign_compile_s": compile_s, "identical_prefix_tokens": same, "load_avg_1m": os.getloadavg()[0],
        "linalign_text": tok.decode(ours),
    }
    print(f"linalign      {res['linalign_tok_s']:8.1f} tok/s  (compile {compile_s:.1f} s, excluded)")
    print(f"transformers  {res['transformers_tok_s']:8.1f} tok/s  (torch threads {FLAGS.threads})")
    print(f"ratio         {res['ratio']:8.2f}x   identical first {same}/{n} tokens; "
          f"load avg {res['load_avg_1m']:.1f} (shared machine)")
    if FLAGS.out_json:
        tmp = FLAGS.out_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, FLAGS.out_json)


if __name__ == "__main__":
    app.run(main)
