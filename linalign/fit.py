r"""Fits an affine map between two models' embeddings of the same texts.

  linalign fit --source=STORE_OR_NPY --target=STORE_OR_NPY --out_dir=DIR \
      [--lam=auto | --lam=1e-4 | --lam=rel:1e-3 | --lam=gcv | --lam=cv:10] \
      [--lam_grid=1e-3,1e-2,1e-1] [--folds=5] [--val_fraction=0.1] [--dtype=float64] \
      [--scale=std] [--mesh=data=8]

Writes DIR/map.safetensors (linalign.AffineMap.load reads it), DIR/report.json,
DIR/report.md and, when a lambda was searched, DIR/lambda.png. The same program runs as
`python -m linalign.fit`; `linalign distributed fit` is the multi-process driver.
"""

# The pipeline is the one every fit uses (``linalign.align.fitting.fit_stream``): sources,
# per-fold accumulation, the lambda policy, a float64 solve, the map file.
#
# As a package attribute, ``linalign.fit(z_b, z_a, lam="auto")`` is the Python fitting function;
# this module stays callable the same way if it is imported (see the end of the file).

import pathlib
import sys
import types

from absl import flags


def define_flags() -> None:
    from linalign import flags as shared

    shared.define_source_target()
    shared.define_out_dir("Output directory (must be empty or absent unless --overwrite).")
    shared.define_fit_policy()
    shared.define_batch_size("fit")
    shared.define_dtype(["float32", "float64"], "float32", "Accumulation dtype (float64 runs on "
                        "the host with numpy; the solve is always float64).")
    flags.DEFINE_enum("scale", "none", ["none", "std"], "Per-dimension source scaling before the "
                      "fit (undone exactly in W and b).")
    shared.define_mesh()
    flags.DEFINE_enum("method", "cholesky", ["cholesky", "eigh"], "Solve method.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out_dir.")


def main(argv):
    from absl import app

    from linalign.align import fitting
    from linalign.align.sources import open_embeddings
    from linalign.mesh import make_mesh

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    F = flags.FLAGS
    out_dir = pathlib.Path(F.out_dir)
    if not F.overwrite and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise app.UsageError(f"--out_dir={F.out_dir} exists and is not empty; pass --overwrite "
                             "to replace it, or name a new directory")
    mesh = make_mesh(F.mesh) if F.mesh else None  # a mesh that cannot be built fails first
    src, tgt = open_embeddings(F.source), open_embeddings(F.target)
    grid = None if F.lam_grid is None else [float(x) for x in F.lam_grid]
    result = fitting.fit_sources(
        src, tgt, lam=F.lam, lam_grid=grid, val_fraction=F.val_fraction, folds=F.folds,
        seed=F.seed, batch_size=F.batch_size, mesh=mesh,
        method=F.method, dtype=F.dtype, scale=None if F.scale == "none" else F.scale)
    out = fitting.write_fit(result, F.out_dir, overwrite=F.overwrite)
    if F.verbose:
        print(fitting._markdown(result.report))
    print(result.map)
    print(f"wrote {out}/map.safetensors, report.md, report.json")


def _program():
    from linalign.cli import Program

    return Program(__doc__, define_flags, main, required=("source", "target", "out_dir"),
                   summary="an affine map between two models' embeddings")


class _CallableModule(types.ModuleType):
    """Importing this submodule rebinds ``linalign.fit`` to it; calling it still fits."""

    def __call__(self, *args, **kwargs):
        from linalign.align.fitting import fit

        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

PROGRAM = _program()

if __name__ == "__main__":
    from linalign.cli import module_main

    module_main("fit")
