"""Scale-out entry points.

Fit a map over paired embeddings, on one process or many (run the same command on each)::

    python -m linalign.distributed fit --source_store=zb.npy --target_store=za.npy \
        --out_dir=runs/fit --checkpoint_every=50 --lam=1e-2 --batch_size=1024

Extract hidden states on every process (each takes its contiguous share of the corpus and
writes its own part of a parted store; process 0 writes the index)::

    python -m linalign.distributed extract --model=all-minilm-l6-v2 --corpus=bbc_news \
        --out_dir=emb/minilm --forward_batch=32

Plan per-device memory without allocating anything::

    python -m linalign.distributed plan --model_config=llama3-8b --mesh=data=2,model=4 \
        --batch=8 --seq=2048 --d_b=8192 --d_a=8192 --cpu_devices=8

Multi-process settings come from the cluster (SLURM, TPU pods) or from --coordinator_address /
--num_processes / --process_id (or LINALIGN_COORDINATOR / LINALIGN_NUM_PROCESSES /
LINALIGN_PROCESS_ID, as launch/local_cpu.sh sets them).
"""

from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS
COMMANDS = ("fit", "extract", "plan")

flags.DEFINE_enum("cluster", "auto", ["auto", "explicit", "slurm", "tpu", "none"],
                  "How to join a multi-process job (see linalign.distributed.runtime).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit clusters).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit clusters).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit clusters).")
flags.DEFINE_list("local_device_ids", None, "Devices this process drives (e.g. one GPU each).")
flags.DEFINE_string("mesh", "data=-1", "Mesh axes, e.g. data=-1 or data=2,model=4.")
# fit
flags.DEFINE_string("source_store", None, "Source embeddings: [n, d_b] .npy or store directory.")
flags.DEFINE_string("target_store", None, "Target embeddings: [n, d_a] .npy or store directory.")
flags.DEFINE_string("out_dir", None, "Where stats.npz, map.npz and fit.json go.")
flags.DEFINE_string("checkpoint_dir", None, "Checkpoints (default: <out_dir>/checkpoints).")
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints.")
flags.DEFINE_integer("batch_size", 1024, "Rows each process reads per step.")
flags.DEFINE_float("lam", 1e-2, "Ridge strength (on the scale of C_bb, a sum over rows).")
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
flags.DEFINE_integer("limit", None, "extract: only the first N texts of the corpus.")
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
    from linalign.distributed import runtime
    from linalign.distributed import streaming_fit as sf

    for name in ("source_store", "target_store", "out_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"fit needs --{name}")
    mesh = runtime.global_mesh(runtime.parse_mesh(FLAGS.mesh))
    ckpt = FLAGS.checkpoint_dir or f"{FLAGS.out_dir.rstrip('/')}/checkpoints"
    if "://" not in ckpt:  # orbax wants absolute local paths; gs:// and the like pass through
        import os
        ckpt = os.path.abspath(ckpt)
    fit = sf.StreamingFit(FLAGS.source_store, FLAGS.target_store, mesh, FLAGS.batch_size,
                          checkpoint_dir=ckpt, checkpoint_every=FLAGS.checkpoint_every,
                          batch_delay_s=FLAGS.batch_delay_s)
    sf.finish(fit, fit.run(), FLAGS.out_dir, FLAGS.lam)


def _extract() -> None:
    from linalign import data
    from linalign.distributed import extract

    for name in ("model", "corpus", "out_dir"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"extract needs --{name}")
    corpus = data.load_corpus(FLAGS.corpus)
    texts = corpus.texts[: FLAGS.limit] if FLAGS.limit else corpus.texts
    index = extract.run(FLAGS.model, texts, FLAGS.out_dir, corpus=corpus.name,
                        pooling=FLAGS.pooling, max_length=FLAGS.max_length,
                        batch_size=FLAGS.forward_batch, truncation=FLAGS.truncation)
    if index is not None:
        print(f"wrote {FLAGS.out_dir}: {index['num_rows']} rows in {len(index['parts'])} parts, "
              f"dim {index['dim']}")


def _plan() -> None:
    import jax

    if FLAGS.cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    from linalign.distributed import memory, runtime

    mesh = runtime.global_mesh(runtime.parse_mesh(FLAGS.mesh))
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
