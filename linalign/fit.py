"""Fits an affine map between two models' embeddings of the same texts.

  python -m linalign.fit --source=STORE_OR_NPY --target=STORE_OR_NPY --out_dir=DIR \
      [--lam=auto | --lam=1e-4 | --lam=rel:1e-3 | --lam=gcv | --lam=cv:10] \
      [--lam_grid=1e-3,1e-2,1e-1] [--folds=5] [--val_fraction=0.1] [--dtype=float64] \
      [--scale=std] [--mesh=data=8]

Writes DIR/map.safetensors (``linalign.AffineMap.load`` reads it), DIR/report.json,
DIR/report.md and, when a lambda was searched, DIR/lambda.png. The pipeline is the one every
fit uses (``linalign.align.fitting.fit_stream``): sources, per-fold accumulation, the lambda
policy, a float64 solve, the map file. ``python -m linalign.distributed fit`` is the
multi-process driver over the same pieces.

As a package attribute, ``linalign.fit(z_b, z_a, lam="auto")`` is the Python fitting function;
this module stays callable the same way if it is imported (see the end of the file).
"""

import sys
import types

from absl import app, flags, logging

flags.DEFINE_string("source", None, "Source-model (Z_B) embeddings: store directory or .npy.")
flags.DEFINE_string("target", None, "Target-model (Z_A) embeddings: store directory or .npy.")
flags.DEFINE_string("out_dir", None, "Output directory (must be empty or absent unless --overwrite).")
flags.DEFINE_string("lam", "auto", "Lambda spec: auto (k-fold CV), cv:K, gcv, rel:F (F x mean "
                    "eigenvalue of C_bb) or an absolute number (on the scale of C_bb).")
flags.DEFINE_list("lam_grid", None, "Candidate lambdas; default: 13 values, 1e-6..1e2 x C_bb's "
                  "mean eigenvalue.")
flags.DEFINE_integer("folds", 5, "Cross-validation folds accumulated in the streaming pass.")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of rows held out to score the map.")
flags.DEFINE_integer("seed", 0, "Seed of the fold and held-out assignments.")
flags.DEFINE_integer("batch_size", 8192, "Rows per accumulation step.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Accumulation dtype (float64 runs "
                  "on the host with numpy; the solve is always float64).")
flags.DEFINE_enum("scale", "none", ["none", "std"], "Per-dimension source scaling before the "
                  "fit (undone exactly in W and b).")
flags.DEFINE_string("mesh", None, "Device mesh, e.g. 'data=8' or 'data=4,model=2'.")
flags.DEFINE_enum("method", "cholesky", ["cholesky", "eigh"], "Solve method.")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out_dir.")


def main(argv):
    del argv
    from linalign.align import fitting
    from linalign.align.sources import open_embeddings
    from linalign.mesh import make_mesh

    from linalign.align.lambdas import LambdaSpec

    F = flags.FLAGS
    for name in ("source", "target", "out_dir"):
        if not getattr(F, name):
            raise app.UsageError(f"--{name} is required")
    try:
        LambdaSpec.parse(F.lam)  # refuse a bad spec before reading any data
    except ValueError as e:
        raise app.UsageError(f"--lam: {e}") from None
    src, tgt = open_embeddings(F.source), open_embeddings(F.target)
    grid = None if F.lam_grid is None else [float(x) for x in F.lam_grid]
    result = fitting.fit_sources(
        src, tgt, lam=F.lam, lam_grid=grid, val_fraction=F.val_fraction, folds=F.folds,
        seed=F.seed, batch_size=F.batch_size, mesh=make_mesh(F.mesh) if F.mesh else None,
        method=F.method, dtype=F.dtype, scale=None if F.scale == "none" else F.scale)
    out = fitting.write_fit(result, F.out_dir, overwrite=F.overwrite)
    logging.info("wrote %s", out)
    print(result.map)
    print(fitting._markdown(result.report))


class _CallableModule(types.ModuleType):
    """Importing this submodule rebinds ``linalign.fit`` to it; calling it still fits."""

    def __call__(self, *args, **kwargs):
        from linalign.align.fitting import fit

        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    app.run(main)
