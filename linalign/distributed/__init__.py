"""Scale-out: the fit and the extraction on many processes (JAX's multi-controller runtime).

  runtime        join the job (explicit / SLURM / TPU pod), process shares of inputs
  streaming_fit  the single-host fit's pieces run by every process on its own rows (per-fold
                 accumulation by global row index), merged exactly, checkpointed and resumable
  checkpointing  orbax checkpoints plus a sha256 manifest that catches partial/corrupt steps
  memory         ahead-of-time per-device memory plans (fit step, model forward passes)

Entry point: ``python -m linalign.distributed {fit,extract,plan} --flags`` (see ``__main__``);
meshes come from ``linalign.mesh``, extraction is ``linalign.extract.job``.
Modules are imported on demand; importing this package loads nothing heavy.
"""
