r"""Scale-out entry points: `linalign distributed {fit|extract|plan}`.

Also `python -m linalign.distributed {fit|extract|plan}`. Multi-process settings come from the
cluster (SLURM, TPU pods) or from --coordinator_address / --num_processes / --process_id (or
LINALIGN_COORDINATOR / LINALIGN_NUM_PROCESSES / LINALIGN_PROCESS_ID, as launch/local_cpu.sh
sets them).
"""

from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS

FIT_USAGE = r"""Fits a map over paired embeddings, on one process or many (run the same command on each).

  linalign distributed fit --source=emb/smol --target=emb/gemma --pair_tokens \
      --out_dir=runs/fit --lam=auto --checkpoint_every=50 --batch_size=8192
  launch/local_cpu.sh -n 2 -m 4 -- linalign distributed fit --source=zb.npy \
      --target=za.npy --out_dir=runs/fit --mesh=data=-1

It is the single-host fit (`linalign fit`) spread over processes: the same sources, per-fold
accumulator, lambda policy (default auto: exact k-fold CV) and map file
(OUT_DIR/map.safetensors, read by linalign.AffineMap.load). Orbax checkpoints every
--checkpoint_every steps; the same command resumes after an interruption.
"""

EXTRACT_USAGE = r"""Extracts hidden states on every process into one store.

  launch/local_cpu.sh -n 2 -m 1 -- linalign distributed extract \
      --model=smollm2-135m-instruct --corpus=austen+bbc_sentences+fortunes --per_token \
      --out_dir=emb/smol --batch_size=32

Each process takes its contiguous share of the corpus and writes its own part of one store;
process 0 writes the store's manifest. The job is the one `linalign extract` runs.
"""

PLAN_USAGE = r"""Plans per-device memory of a forward pass and of the fit, without allocating anything.

  linalign plan --model_config=llama3-8b --mesh=data=2,model=4 \
      --batch_size=8 --seq=2048 --d_b=8192 --d_a=8192 --cpu_devices=8 --out_dir=plans/8b

Also `linalign distributed plan`. With --out_dir, writes plan.json, plan.md and plan.png there.
"""


def _define_runtime() -> None:
    flags.DEFINE_enum("cluster", "auto", ["auto", "explicit", "slurm", "tpu", "none"],
                      "How to join a multi-process job (see linalign.distributed.runtime).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit clusters).")
    flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit clusters).")
    flags.DEFINE_integer("process_id", None, "This process's index (explicit clusters).")
    flags.DEFINE_list("local_device_ids", None, "Devices this process drives (e.g. one GPU each).")


def define_fit_flags() -> None:
    from linalign import flags as shared

    _define_runtime()
    shared.define_source_target("embeddings (store directory with any number of parts)")
    shared.alias("source_store", "source")
    shared.alias("target_store", "target")
    flags.DEFINE_bool("pair_tokens", False, "The stores are per-token: pair target tokens with "
                      "source tokens by character offsets (linalign.eval.pairing) and fit on the pairs.")
    flags.DEFINE_bool("allow_incomplete", False, "With --pair_tokens: use the texts both stores "
                      "have finished so far (an extraction still running or stopped).")
    flags.DEFINE_integer("max_rows", None, "Fit on the first N (paired) rows only.")
    shared.define_out_dir("Where map.safetensors, report.json and report.md go.")
    flags.DEFINE_string("checkpoint_dir", None, "Checkpoints (default: <out_dir>.checkpoints).")
    flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints.")
    shared.define_batch_size("fit", "Rows each process reads per step.")
    shared.define_fit_policy()
    shared.define_dtype(["float32", "float64"], "float32", "Accumulation dtype.")
    shared.alias("fit_dtype", "dtype")
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out_dir.")
    flags.DEFINE_float("batch_delay_s", 0.0, "Sleep after each step (for fault-injection tests).")
    shared.define_mesh("over each process's own devices.")


def define_extract_flags() -> None:
    from linalign import flags as shared
    from linalign.extract.__main__ import define_job_flags

    _define_runtime()
    define_job_flags()
    shared.alias("forward_batch", "batch_size")
    shared.define_mesh("over each process's own devices (default data=-1: extraction needs no "
                       "communication).")
    shared.alias("extract_mesh", "mesh")


def define_plan_flags() -> None:
    from linalign import flags as shared

    flags.DEFINE_string("model_config", "llama3-8b", "Preset name or config.json path ('' to skip).")
    shared.define_batch_size("extract", "Forward-pass batch (texts).")
    shared.alias("batch", "batch_size")
    flags.DEFINE_integer("seq", 2048, "Forward-pass sequence length.")
    flags.DEFINE_integer("d_b", 8192, "Source width for the fit plan (0 to skip it).")
    flags.DEFINE_integer("d_a", 8192, "Target width for the fit plan.")
    flags.DEFINE_integer("fit_batch_per_device", 256, "Rows per device per fit step.")
    flags.DEFINE_boolean("logits", False, "Plan the forward pass with the LM head's logits.")
    flags.DEFINE_integer("cpu_devices", 0, "Use this many host CPU devices (no accelerator needed).")
    shared.define_mesh("over all devices.")
    shared.define_out_dir("Write plan.json, plan.md and plan.png here.")
    shared.alias("report_dir", "out_dir")


def _initialize() -> None:
    from linalign.distributed import runtime

    runtime.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                       [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None,
                       cluster=FLAGS.cluster)


def _no_args(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def fit_main(argv) -> None:
    import os
    import pathlib
    import time

    _no_args(argv)
    out_dir = pathlib.Path(FLAGS.out_dir)
    if "://" not in FLAGS.out_dir and not FLAGS.overwrite and out_dir.exists() and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        raise app.UsageError(f"--out_dir={FLAGS.out_dir} exists and is not empty; pass "
                             "--overwrite to replace it, or name a new directory")
    _initialize()
    import jax

    from linalign.align import fitting
    from linalign.align.sources import open_embeddings, open_token_pairs
    from linalign.distributed import runtime, streaming_fit as sf
    from linalign.mesh import make_mesh

    first = jax.process_index() == 0
    if FLAGS.pair_tokens:
        src, tgt, _ = open_token_pairs(FLAGS.source, FLAGS.target,
                                       allow_incomplete=FLAGS.allow_incomplete, progress=first)
    else:
        src, tgt = open_embeddings(FLAGS.source), open_embeddings(FLAGS.target)
    ckpt = FLAGS.checkpoint_dir or f"{FLAGS.out_dir.rstrip('/')}.checkpoints"
    if "://" not in ckpt:  # orbax wants absolute local paths; gs:// and the like pass through
        ckpt = os.path.abspath(ckpt)
    # Each process accumulates on its own devices; only the statistics cross processes.
    mesh = make_mesh(FLAGS.mesh, jax.local_devices()) if FLAGS.mesh else None
    fit = sf.StreamingFit(src, tgt, lam=FLAGS.lam, folds=FLAGS.folds, seed=FLAGS.seed,
                          heldout=FLAGS.val_fraction, batch_size=FLAGS.batch_size,
                          dtype=FLAGS.dtype, mesh=mesh, checkpoint_dir=ckpt,
                          checkpoint_every=FLAGS.checkpoint_every, max_rows=FLAGS.max_rows,
                          batch_delay_s=FLAGS.batch_delay_s)
    t0 = time.perf_counter()
    fold_stats, val = fit.run(progress=first)
    result = sf.finish(fit, fold_stats, val, metadata=sf.source_metadata(src, tgt),
                       grid=None if FLAGS.lam_grid is None else [float(x) for x in FLAGS.lam_grid],
                       seconds_accumulate=time.perf_counter() - t0)
    if first:
        out = fitting.write_fit(result, FLAGS.out_dir, overwrite=FLAGS.overwrite)
        if FLAGS.verbose:
            print(fitting._markdown(result.report))
        print(result.map)
        print(f"wrote {out}/map.safetensors, report.md, report.json "
              f"({jax.process_count()} processes; checkpoints in {ckpt})")
    runtime.barrier("linalign_fit_written")


def extract_main(argv) -> None:
    import time

    from linalign.extract.__main__ import run_job

    _no_args(argv)
    _initialize()
    t0 = time.perf_counter()
    store = run_job(FLAGS.mesh)
    if store is not None:
        print(f"wrote {FLAGS.out_dir}: {store.num_rows} texts in {len(store.parts)} parts, "
              f"dim {store.dim}, per_token={store.per_token}, {time.perf_counter() - t0:.1f} s")


def plan_main(argv) -> None:
    import jax

    _no_args(argv)
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
        rep, facts = memory.plan_forward(FLAGS.model_config, mesh, FLAGS.batch_size, FLAGS.seq,
                                         return_logits=FLAGS.logits)
        reports.append(rep)
    print(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.default_backend()} devices; "
          "bytes per device:")
    for r in reports:
        print("  " + r.line())
    if facts:
        print(f"  {FLAGS.model_config}: {facts['num_params'] / 1e9:.2f}B parameters, "
              f"{facts['param_bytes_per_device'] / memory.MiB:.1f} MiB of them per device")
    if FLAGS.out_dir:
        memory.write_plan_report(FLAGS.out_dir, reports, facts, dict(mesh.shape))
        print(f"wrote {FLAGS.out_dir}/plan.json, plan.md, plan.png")


def _programs():
    from linalign.cli import Program

    return {
        "fit": Program(FIT_USAGE, define_fit_flags, fit_main, required=("source", "target", "out_dir"),
                       summary="fit a map on one process or many, checkpointed, resumable"),
        "extract": Program(EXTRACT_USAGE, define_extract_flags, extract_main,
                           required=("model", "corpus", "out_dir"),
                           summary="extract hidden states on every process into one store"),
        "plan": Program(PLAN_USAGE, define_plan_flags, plan_main,
                        summary="per-device memory of a forward pass and a fit"),
    }


PROGRAMS = _programs()

if __name__ == "__main__":
    from linalign.cli import module_main

    module_main("distributed")
