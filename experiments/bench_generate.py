"""Greedy decoding speed: linalign's jitted KV-cached decoder vs transformers' generate.

Same model (SmolLM2-135M-Instruct GGUF, dequantized to float32 on both sides), same chat prompt,
same number of new tokens (EOS disabled on both sides so both produce exactly that many), batch 1,
torch limited to ``--threads`` threads. linalign's time excludes the one-off compilation (reported
separately); transformers' time is the best of ``--repeats`` warm runs, as is linalign's.

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


def bench_linalign(path, prompt, n, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from linalign import checkpoints
    from linalign.generate import decode

    model = checkpoints.load(str(path))
    tok = model.tokenizer
    ids = np.asarray([tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]),
                                 add_special_tokens=False)])
    dec = decode.Decoder(model.module, model.params)
    t0 = time.perf_counter()
    first = dec.generate(ids, max_new_tokens=n, eos_ids=())
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen = dec.generate(ids, max_new_tokens=n, eos_ids=())
        jax.block_until_ready(gen.tokens)
        times.append(time.perf_counter() - t0)
    assert np.array_equal(first.tokens, gen.tokens)
    return min(times), compile_s, ids, gen.tokens[0].tolist(), tok


def bench_transformers(path, ids, n, repeats, threads):
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
    with torch.no_grad():
        model.generate(x, **kw)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(x, **kw)
            times.append(time.perf_counter() - t0)
    return min(times), out[0, ids.shape[1]:].tolist()


def main(argv):
    del argv
    import pathlib

    from linalign.checkpoints import resolve

    path = pathlib.Path(resolve(FLAGS.model))
    n = FLAGS.new_tokens
    logging.info("linalign: loading and compiling")
    t_ours, compile_s, ids, ours, tok = bench_linalign(path, FLAGS.prompt, n, FLAGS.repeats)
    logging.info("transformers: loading %s (slow: dequantizes in torch)", path.name)
    t_ref, theirs = bench_transformers(path, ids, n, FLAGS.repeats, FLAGS.threads)
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
