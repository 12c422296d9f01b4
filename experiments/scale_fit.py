"""A fit at scale through the whole spine: per-token states of two causal LMs, extracted by two
processes, paired by character offsets, fit on two processes with lambda by streamed k-fold CV,
evaluated on held-out texts, and the map loaded by the HELIX client and the cross-model decoder.

  # 1. extraction (two processes per model, through launch/local_cpu.sh; see README of the results)
  launch/local_cpu.sh -n 2 -m 1 -- python -m linalign.distributed extract \
      --model=gemma3-270m --corpus=austen+bbc_sentences+fortunes --shuffle_seed=0 \
      --limit=36000 --per_token --batch_size=32 --shard_rows=1024 --out_dir=emb/gemma
  (the same with --model=smollm2-135m-instruct --out_dir=emb/smol)
  # 2. fits at several row counts (each: launch/local_cpu.sh -n 2 -m 1 -- python -m
  #    linalign.distributed fit --pair_tokens ...), held-out evaluation, plot and results
  python experiments/scale_fit.py --source=emb/gemma --target=emb/smol \
      --target_model=smollm2-135m-instruct --sizes=100000,300000,max --out=docs/results/scale_fit

Held-out rows are every pair of the last ``--eval_texts`` texts both stores hold; no fit sees
them (``--max_rows`` stops each fit before them). Next-token agreement: how often the target's
LM head on the mapped source state picks the token the target's LM head picks on the target's
own state (and, for reference, how often each picks the text's actual next target token).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

flags.DEFINE_string("source", None, "Per-token store of the source model (Z_B).")
flags.DEFINE_string("target", None, "Per-token store of the target model (Z_A).")
flags.DEFINE_string("target_model", "smollm2-135m-instruct", "Target checkpoint (its LM head).")
flags.DEFINE_list("sizes", ["100000", "300000", "max"], "Training rows of each fit ('max': all).")
flags.DEFINE_integer("eval_texts", 400, "Held-out texts at the end of the paired texts.")
flags.DEFINE_integer("eval_rows", 8000, "Held-out rows scored with the LM head (all for R^2).")
flags.DEFINE_string("work", "runs/scale_fit", "Fit output directories.")
flags.DEFINE_string("out", None, "Write results.json, report.md and fit_time.png here.")
flags.DEFINE_bool("allow_incomplete", True, "Use what both extractions have finished.")
flags.DEFINE_integer("batch_size", 8192, "Rows per process per accumulation step.")
flags.DEFINE_float("extraction_started", None, "Unix time both extractions were started "
                   "(for their rows/s: committed tokens over the time to the last shard).")
flags.DEFINE_string("only_consumers", None, "Just check that this map loads in helix and "
                    "generate.cross (skips the fits).")
FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]


def _fit(n_rows: int, out: pathlib.Path) -> dict:
    """One two-process fit of the first n_rows pairs; returns its report plus the wall time."""
    cmd = ["bash", str(REPO / "launch" / "local_cpu.sh"), "-n", "2", "-m", "1", "-l",
           str(out) + ".logs", "--", sys.executable, "-m", "linalign.distributed", "fit",
           f"--source={FLAGS.source}", f"--target={FLAGS.target}", "--pair_tokens",
           f"--max_rows={n_rows}", f"--out_dir={out}", "--overwrite", "--lam=auto",
           "--val_fraction=0.02", f"--batch_size={FLAGS.batch_size}", "--checkpoint_every=20"]
    if FLAGS.allow_incomplete:
        cmd.append("--allow_incomplete")
    # A fresh fit: checkpoints of an earlier run of other rows would be refused, not reused.
    shutil.rmtree(str(out) + ".checkpoints", ignore_errors=True)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO))
    logging.info("fit of %d rows: %s", n_rows, " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fit of {n_rows} rows failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    rep = json.loads((out / "report.json").read_text())
    rep["wall_seconds"] = wall
    return rep


def _evaluate(map_dir: pathlib.Path, src, tgt, rows: np.ndarray, model) -> dict:
    """R^2 / cosine on all held-out rows; LM-head agreement on up to eval_rows of them."""
    import jax
    import jax.numpy as jnp

    from linalign.align.affine_map import AffineMap

    amap = AffineMap.load(map_dir)
    z_b = np.concatenate([src.read(int(a), int(b)) for a, b in _runs(rows)])
    z_a = np.concatenate([tgt.read(int(a), int(b)) for a, b in _runs(rows)])
    scores = amap.evaluate(z_b, z_a)
    sel = np.linspace(0, len(rows) - 1, min(FLAGS.eval_rows, len(rows))).astype(int)
    mapped = np.asarray(amap(z_b[sel]), np.float32)
    head = jax.jit(lambda p, h: jnp.argmax(model.module.apply({"params": p}, h,
                                                            method=type(model.module).lm_head),
                                           axis=-1))
    pick_true, pick_map = [], []
    for i in range(0, len(sel), 512):
        pick_true.append(np.asarray(head(model.params, jnp.asarray(z_a[sel][i:i + 512]))))
        pick_map.append(np.asarray(head(model.params, jnp.asarray(mapped[i:i + 512]))))
    pick_true, pick_map = np.concatenate(pick_true), np.concatenate(pick_map)
    # The text's actual next target token, where the next token belongs to the same text.
    tok = tgt.row_tokens[rows[sel]]
    nxt = np.minimum(tok + 1, len(tgt.token_ids) - 1)
    same_text = np.isin(nxt, tgt.row_tokens[rows]) & (nxt == tok + 1)
    actual = tgt.token_ids[nxt]
    return {"r2": scores["r2"], "cosine": scores["cosine"], "rows": int(len(rows)),
            "lm_head_rows": int(len(sel)),
            "next_token_agreement": float(np.mean(pick_map == pick_true)),
            "next_token_accuracy_mapped": float(np.mean((pick_map == actual)[same_text])),
            "next_token_accuracy_target": float(np.mean((pick_true == actual)[same_text]))}


def check_consumers(map_path: pathlib.Path, src, heldout: np.ndarray, target, work: pathlib.Path) -> dict:
    """Loads the map, unchanged, in ``python -m linalign.helix query`` and in
    ``linalign.generate.cross``; returns what each produced.

    HELIX: the provider's head is 8 rows of the target's own LM head (token embeddings, tied),
    the client maps 4 held-out source states with the map file and gets the encrypted scores;
    they must equal the plaintext scores (mapped state @ head) to CKKS precision.
    """
    from linalign import checkpoints
    from linalign.align.affine_map import AffineMap
    from linalign.atomic import atomic_file
    from linalign.generate.cross import CrossDecoder

    amap = AffineMap.load(map_path)
    emb = np.asarray(target.params["embed_tokens"]["embedding"], np.float64)
    tok_ids = np.array([target.tokenizer.encode(w)[-1] for w in
                        (" the", " of", " and", " to", " a", " in", " was", " she")])
    v_dk = emb[tok_ids].T                                       # [d_a, 8]
    bundle = work / "head_bundle.npz"
    with atomic_file(bundle, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, v_dk=v_dk, c_k=np.zeros(len(tok_ids)))
    z = src.read(int(heldout[0]), int(heldout[0]) + 4).astype(np.float64)
    with atomic_file(work / "queries.npy", suffix=".npy") as tmp:
        np.save(tmp, z)
    port_file = work / "helix.port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    helix = [sys.executable, "-m", "linalign.helix"]
    server = subprocess.Popen(helix + ["serve", "--port=0", f"--port_file={port_file}",
                                       f"--head={bundle}", "--max_connections=1",
                                       # the largest query norm the provider announces it serves
                                       f"--input_norm={2 * np.linalg.norm(amap(z), axis=1).max():.6g}",
                                       "--max_seconds=900"], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    q = None
    try:
        while not port_file.exists():  # written once the server listens
            if server.poll() is not None:
                raise RuntimeError(f"helix serve exited: {server.stdout.read()[-2000:]}")
            time.sleep(0.5)
        port = int(port_file.read_text())
        q = subprocess.run(helix + ["query", f"--port={port}", f"--map={map_path}",
                                    f"--embeddings={work / 'queries.npy'}",
                                    f"--out_dir={work / 'scores'}"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    finally:
        if q is not None and q.returncode == 0:
            server.wait(timeout=120)
        else:
            server.kill()
    if q.returncode != 0:
        raise RuntimeError(f"helix query failed: {q.stderr[-3000:]}")
    enc = np.load(work / "scores" / "scores.npy")
    plain = np.asarray(amap(z), np.float64) @ v_dk
    helix_out = {"command": "python -m linalign.helix query --map=" + map_path.name,
                 "queries": 4, "max_abs_error_vs_plaintext": float(np.max(np.abs(enc - plain))),
                 "max_abs_score": float(np.max(np.abs(plain))), "query_stats": json.loads(q.stdout.strip().splitlines()[-1])}
    source = checkpoints.load(src.model)
    dec = CrossDecoder(source, str(map_path), target)
    gen = dec.generate("It is a truth universally acknowledged, that", max_new_tokens=12)
    return {"helix_query": helix_out,
            "generate_cross": {"prompt": "It is a truth universally acknowledged, that",
                               "text": gen.text, "finish_reason": gen.finish_reason}}


def extraction_summary(store_path: str, started: float) -> dict:
    """Tokens committed by a (possibly running) extraction and its rate since ``started``."""
    from linalign.extract.store import open_store

    st = open_store(store_path, require_complete=False)
    last, tokens = started, 0
    for part in st.parts:
        for s in part.manifest["shards"]:
            tokens += int(s["tokens"])
            last = max(last, (part.path / s["file"]).stat().st_mtime)
    return {"store": store_path, "model": st.manifest.get("model"), "texts": st.num_rows,
            "tokens": tokens, "parts": len(st.parts), "complete": st.complete,
            "seconds": last - started, "tokens_per_second": tokens / max(last - started, 1e-9)}


def _markdown(summary: dict) -> str:
    """The results table (one row per fit) and the consumer checks."""
    lines = ["| training rows | fit s (accumulate + CV + solve) | fit rows/s | wall s | peak RSS MiB "
             "(per process) | lambda (kfold-5) | CV R^2 | held-out R^2 | held-out cosine | "
             "next-token agreement |", "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in summary["fits"]:
        h = r["heldout_texts"]
        t = r["seconds_accumulate"] + r["seconds_solve"]
        lines.append(f"| {r['n_rows']:,} | {t:.1f} | {r['n_rows'] / t:,.0f} | "
                     f"{r['wall_seconds']:.0f} | {' / '.join(f'{x:.0f}' for x in r['peak_rss_mib'])} | "
                     f"{r['lambda']:.4g} | {r.get('cv_r2', float('nan')):.4f} | {h['r2']:.4f} | "
                     f"{h['cosine']:.4f} | {h['next_token_agreement']:.3f} |")
    out = "\n".join(lines) + "\n"
    if summary.get("extraction"):
        out += "\n| extraction | texts | tokens | seconds | tokens/s (2 processes) |\n|---|---:|---:|---:|---:|\n"
        for e in summary["extraction"]:
            out += (f"| {e['model']} | {e['texts']:,} | {e['tokens']:,} | {e['seconds']:.0f} | "
                    f"{e['tokens_per_second']:.0f} |\n")
    c = summary.get("consumers") or {}
    if c:
        hq, gc = c["helix_query"], c["generate_cross"]
        out += (f"\nHELIX query with the map file: max |encrypted - plaintext| = "
                f"{hq['max_abs_error_vs_plaintext']:.2e} (scores up to {hq['max_abs_score']:.1f}), "
                f"{hq['query_stats']['ms_per_query']:.0f} ms/query. generate.cross: "
                f"{gc['prompt']!r} -> {gc['text']!r} ({gc['finish_reason']}).\n")
    return out


def _runs(rows: np.ndarray):
    """Consecutive runs [a, b) of sorted row indices (reads stay sequential)."""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    for r in np.split(rows, cut):
        yield r[0], r[-1] + 1


def _plot(results: list, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linalign.atomic import atomic_file

    n = np.array([r["n_rows"] for r in results], float)
    t = np.array([r["seconds_accumulate"] + r["seconds_solve"] for r in results])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(n, t, "o-", label="accumulate (5 folds) + CV + solve")
    ax.plot(n, t[-1] * n / n[-1], "k:", lw=1, label="linear through the largest")
    ax.set_xlabel("paired per-token rows")
    ax.set_ylabel("fit time (s), 2 processes")
    ax.set_title("Gemma-3-270M -> SmolLM2-135M per-token fit")
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    from linalign import checkpoints
    from linalign.align.sources import open_token_pairs
    from linalign.atomic import atomic_write, atomic_write_json

    src, tgt, text_of = open_token_pairs(FLAGS.source, FLAGS.target,
                                         allow_incomplete=FLAGS.allow_incomplete)
    texts = np.unique(text_of)
    cut = texts[-FLAGS.eval_texts]
    n_train_max = int(np.searchsorted(text_of, cut))
    heldout = np.arange(n_train_max, len(text_of))
    logging.info("%d pairs over %d texts; %d pairs of the last %d texts held out", len(text_of),
                 len(texts), len(heldout), FLAGS.eval_texts)
    sizes = sorted({n_train_max if s == "max" else min(int(s), n_train_max) for s in FLAGS.sizes})
    model = checkpoints.load(FLAGS.target_model)
    work = pathlib.Path(FLAGS.work)
    work.mkdir(parents=True, exist_ok=True)
    if FLAGS.only_consumers:
        print(json.dumps(check_consumers(pathlib.Path(FLAGS.only_consumers), src, heldout, model,
                                         work), indent=1))
        return
    results = []
    for n in sizes:
        out = work / f"fit_{n}"
        rep = _fit(n, out)
        rep["heldout_texts"] = _evaluate(out, src, tgt, heldout, model)
        rep["map"] = str(out / "map.safetensors")
        results.append(rep)
        logging.info("%d rows: %.1f s, %s", n, rep["seconds_accumulate"] + rep["seconds_solve"],
                     json.dumps(rep["heldout_texts"]))
    consumers = check_consumers(work / f"fit_{sizes[-1]}" / "map.safetensors", src, heldout, model, work)
    logging.info("consumers: %s", json.dumps(consumers))
    summary = {"pairs_available": int(len(text_of)), "texts_paired": int(len(texts)),
               "consumers": consumers,
               "extraction": None if FLAGS.extraction_started is None else
               [extraction_summary(x, FLAGS.extraction_started) for x in (FLAGS.source, FLAGS.target)],
               "heldout_texts": FLAGS.eval_texts, "heldout_rows": int(len(heldout)),
               "source_store": FLAGS.source, "target_store": FLAGS.target, "fits": results}
    print(json.dumps(summary, indent=1)[:4000])
    if FLAGS.out:
        out = pathlib.Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "results.json", summary)
        _plot(results, out / "fit_time.png")
        atomic_write(out / "report.md", _markdown(summary))


if __name__ == "__main__":
    flags.mark_flags_as_required(["source", "target"])
    app.run(main)
