"""Scale-out: multi-host fitting on JAX's multi-controller runtime.

  runtime        join the job (explicit / SLURM / TPU pod), process shards, global meshes
  streaming_fit  per-device accumulation over a data x model mesh, checkpointed and resumable
  checkpointing  orbax checkpoints plus a sha256 manifest that catches partial/corrupt steps
  memory         ahead-of-time per-device memory plans (fit programs, model forward passes)

Entry point: ``python -m linalign.distributed {fit,plan} --flags`` (see ``__main__``).
Modules are imported on demand; importing this package loads nothing heavy.
"""
