"""Scale-out entry points.

Fit a map over paired embeddings, on one process or many (run the same command on each)::

    python -m linalign.distributed fit --source_store=emb/smol --target_store=emb/gemma \
        --pair_tokens --out_dir=runs/fit --lam=auto --checkpoint_every=50 --batch_size=8192

It is the single-host fit (``python -m linalign.fit``) spread over processes: the same sources,
per-fold accumulator, lambda policy (default auto: exact k-fold CV) and map file
(``<out_dir>/map.safetensors``, read by ``linalign.AffineMap.load``).

Extract hidden states on every process (each takes its contiguous share of the corpus and
writes its own part of one store; process 0 writes the store's manifest). The job is
``linalign.extract.job``, the one ``python -m linalign.extract`` runs::

    launch/local_cpu.sh -n 2 -m 1 -- python -m linalign.distributed extract \
        --model=smollm2-135m-instruct --corpus=austen+bbc_sentences+fortunes --per_token \
        --out_dir=emb/smol --forward_batch=32

Plan per-device memory without allocating anything::

    python -m linalign.distributed plan --model_config=llama3-8b --mesh=data=2,model=4 \
        --batch=8 --seq=2048 --d_b=8192 --d_a=8192 --cpu_devices=8

Multi-process settings come from the cluster (SLURM, TPU pods) or from --coordinator_address /
--num_processes / --process_id (or LINALIGN_COORDINATOR / LINALIGN_NUM_PROCESSES /
LINALIGN_PROCESS_ID, as launch/local_cpu.sh sets them).
"""

from __future__ import annotations

import jax
from absl import app, flags

FLAGS = flags.FLAGS
COMMANDS = ("fit", "extract", "plan")

flags.DEFINE_enum("cluster", "auto", ["auto", "explicit", "slurm", "tpu", "none"],
                  "How to join a multi-process job (see linalign.distributed.runtime).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit clusters).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit clusters).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit clusters).")
flags.DEFINE_list("local_device_ids", None, "Devices this process drives (e.g. one GPU each).")
flags.DEFINE_string("mesh", None, "Mesh (linalign.mesh syntax), e.g. data=-1 or data=2,model=4: "
                    "fit: over each process's own devices; plan: over all devices.")
# fit
flags.DEFINE_string("source_store", None, "Source embeddings (Z_B): store directory (any number "
                    "of parts) or [n, d_b] .npy.")
flags.DEFINE_string("target_store", None, "Target embeddings (Z_A): store directory or .npy.")
flags.DEFINE_bool("pair_tokens", False, "The stores are per-token: pair target tokens with "
                  "source tokens by character offsets (linalign.eval.pairing) and fit on the pairs.")
flags.DEFINE_bool("allow_incomplete", False, "With --pair_tokens: use the texts both stores "
                  "have finished so far (an extraction still running or stopped).")
flags.DEFINE_integer("max_rows", None, "Fit on the first N (paired) rows only.")
flags.DEFINE_string("out_dir", None, "Where map.safetensors, report.json and report.md go.")
flags.DEFINE_string("checkpoint_dir", None, "Checkpoints (default: <out_dir>.checkpoints).")
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints.")
flags.DEFINE_integer("batch_size", 8192, "Rows each process reads per step.")
flags.DEFINE_string("lam", "auto", "Lambda spec (linalign.align.lambdas): auto (k-fold CV), cv:K, "
                    "gcv, rel:F or an absolute number.")
flags.DEFINE_list("lam_grid", None, "Candidate lambdas (default: 13 values, 1e-6..1e2 x C_bb's "
                  "mean eigenvalue).")
flags.DEFINE_integer("folds", 5, "Cross-validation folds accumulated in the streaming pass.")
flags.DEFINE_integer("seed", 0, "Seed of the fold and held-out assignments.")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of rows held out to score the map.")
flags.DEFINE_enum("fit_dtype", "float32", ["float32", "float64"], "Accumulation dtype.")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out_dir.")
flags.DEFINE_float("batch_delay_s", 0.0, "Sleep after each step (for fault-injection tests).")
# extract
flags.DEFINE_string("model", None, "extract: checkpoint path (.gguf or HF directory) or asset name.")
flags.DEFINE_string("corpus", None, "extract: load_corpus spec or a .txt/.jsonl/.csv path.")
flags.DEFINE_enum("pooling", None, ["mean", "last", "first"],
                  "extract: pooling (default: the checkpoint's own).")
flags.DEFINE_integer("max_length", None, "extract: max tokens per text (default: tokenizer's).")
flags.DEFINE_integer("forward_batch", 32, "extract: texts per forward pass on each process.")
flags.DEFINE_enum("truncation", "warn", ["warn", "error", "silent"],
                  "extract: what to do with texts longer than max_length.")
flags.DEFINE_integer("limit", None, "extract: only the first N texts (after --shuffle_seed).")
flags.DEFINE_integer("shuffle_seed", None, "extract: shuffle the texts with this seed first.")
flags.DEFINE_bool("per_token", False, "extract: store every token's state with its character "
                  "offsets instead of one pooled row per text.")
flags.DEFINE_integer("layer", -1, "extract: hidden state index (-1: final, 0: embeddings).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                  "extract: params/activation dtype.")
flags.DEFINE_enum("store_dtype", "float32", ["float32", "float16"],
                  "extract: dtype of the stored arrays.")
flags.DEFINE_integer("shard_rows", 4096, "extract: texts per store shard (the resume granularity).")
flags.DEFINE_string("extract_mesh", None, "extract: mesh over each process's own devices "
                    "(default data=-1: extraction needs no communication).")
# plan
flags.DEFINE_string("model_config", "llama3-8b", "Preset name or config.json path ('' to skip).")
flags.DEFINE_integer("batch", 8, "Forward-pass batch.")
flags.DEFINE_integer("seq", 2048, "Forward-pass sequence length.")
flags.DEFINE_integer("d_b", 8192, "Source width for the fit plan (0 to skip it).")
flags.DEFINE_integer("d_a", 8192, "Target width for the fit plan.")
flags.DEFINE_integer("fit_batch_per_device", 256, "Rows per device per fit step.")
flags.DEFINE_boolean("logits", False, "Plan the forward pass with the LM head's logits.")
flags.DEFINE_integer("cpu_devices", 0, "Use this many host CPU devices (no accelerator needed).")
flags.DEFINE_string("report_dir", None, "Write plan.json, plan.md and plan.png here.")


def _fit() -> None:
    import os
    import time

    from linalign.align import fitting
    from linalign.align.sources import open_embeddings, open_token_pairs
    from linalign.distributed import runtime, streaming_fit as sf
    from linalign.mesh import make_mesh

    for name in ("source_store", "target_store", "out_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"fit needs --{name}")
    if FLAGS.pair_tokens:
        src, tgt, _ = open_token_pairs(FLAGS.source_store, FLAGS.target_store,
                                       allow_incomplete=FLAGS.allow_incomplete,
                                       progress=jax.process_index() == 0)
    else:
        src, tgt = open_embeddings(FLAGS.source_store), open_embeddings(FLAGS.target_store)
    ckpt = FLAGS.checkpoint_dir or f"{FLAGS.out_dir.rstrip('/')}.checkpoints"
    if "://" not in ckpt:  # orbax wants absolute local paths; gs:// and the like pass through
        ckpt = os.path.abspath(ckpt)
    # Each process accumulates on its own devices; only the statistics cross processes.
    mesh = make_mesh(FLAGS.mesh, jax.local_devices()) if FLAGS.mesh else None
    fit = sf.StreamingFit(src, tgt, lam=FLAGS.lam, folds=FLAGS.folds, seed=FLAGS.seed,
                          heldout=FLAGS.val_fraction, batch_size=FLAGS.batch_size,
                          dtype=FLAGS.fit_dtype, mesh=mesh, checkpoint_dir=ckpt,
                          checkpoint_every=FLAGS.checkpoint_every, max_rows=FLAGS.max_rows,
                          batch_delay_s=FLAGS.batch_delay_s)
    t0 = time.perf_counter()
    fold_stats, val = fit.run()
    result = sf.finish(fit, fold_stats, val, metadata=sf.source_metadata(src, tgt),
                       grid=None if FLAGS.lam_grid is None else [float(x) for x in FLAGS.lam_grid],
                       seconds_accumulate=time.perf_counter() - t0)
    if jax.process_index() == 0:
        fitting.write_fit(result, FLAGS.out_dir, overwrite=FLAGS.overwrite)
        print(result.map)
        print(fitting._markdown(result.report))
    runtime.barrier("linalign_fit_written")


def _extract() -> None:
    from linalign.extract.job import load_texts, run

    for name in ("model", "corpus", "out_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"extract needs --{name}")
    texts, corpus = load_texts(FLAGS.corpus, limit=FLAGS.limit, shuffle_seed=FLAGS.shuffle_seed)
    store = run(FLAGS.model, texts, FLAGS.out_dir, corpus=corpus,
                mesh_spec=FLAGS.extract_mesh, dtype=FLAGS.dtype, pooling=FLAGS.pooling,
                per_token=FLAGS.per_token, max_length=FLAGS.max_length,
                batch_size=FLAGS.forward_batch, truncation=FLAGS.truncation, layer=FLAGS.layer,
                store_dtype=FLAGS.store_dtype, shard_rows=FLAGS.shard_rows)
    if store is not None:
        print(f"wrote {FLAGS.out_dir}: {store.num_rows} rows in {len(store.parts)} parts, "
              f"dim {store.dim}, per_token={store.per_token}")


def _plan() -> None:
    import jax

    if FLAGS.cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    from linalign.distributed import memory

    from linalign.mesh import make_mesh

    mesh = make_mesh(FLAGS.mesh)
    reports, facts = [], {}
    if FLAGS.d_b:
        reports += list(memory.plan_fit(FLAGS.d_b, FLAGS.d_a, FLAGS.fit_batch_per_device, mesh).values())
    if FLAGS.model_config:
        rep, facts = memory.plan_forward(FLAGS.model_config, mesh, FLAGS.batch, FLAGS.seq,
                                         return_logits=FLAGS.logits)
        reports.append(rep)
    print(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.default_backend()} devices; "
          "bytes per device:")
    for r in reports:
        print("  " + r.line())
    if facts:
        print(f"  {FLAGS.model_config}: {facts['num_params'] / 1e9:.2f}B parameters, "
              f"{facts['param_bytes_per_device'] / memory.MiB:.1f} MiB of them per device")
    if FLAGS.report_dir:
        memory.write_plan_report(FLAGS.report_dir, reports, facts, dict(mesh.shape))


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m linalign.distributed {{{'|'.join(COMMANDS)}}} --flags")
    if argv[1] == "plan":
        _plan()
        return
    from linalign.distributed import runtime
    runtime.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                       [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None,
                       cluster=FLAGS.cluster)
    _extract() if argv[1] == "extract" else _fit()


if __name__ == "__main__":
    app.run(main)
