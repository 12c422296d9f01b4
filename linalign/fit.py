"""Fits an affine map between two models' embeddings of the same texts.

  python -m linalign.fit --source=STORE_OR_NPY --target=STORE_OR_NPY --out_dir=DIR \
      [--lam=1e-2 | --lam_grid=1e-3,1e-2,1e-1] [--val_fraction=0.1] [--mesh=data=8]

Writes DIR/map (orbax checkpoint + metadata.json), DIR/report.json, DIR/report.md and, when a
lambda was selected, DIR/lambda.png.
"""

from absl import app, flags, logging

flags.DEFINE_string("source", None, "Source-model (Z_B) embeddings: store directory or .npy.")
flags.DEFINE_string("target", None, "Target-model (Z_A) embeddings: store directory or .npy.")
flags.DEFINE_string("out_dir", None, "Output directory (must be empty or absent unless --overwrite).")
flags.DEFINE_float("lam", None, "Fixed ridge strength (on the scale of C_bb, a sum over rows).")
flags.DEFINE_list("lam_grid", None, "Candidate lambdas; default: a grid scaled by C_bb's mean eigenvalue.")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of rows held out for selection and evaluation.")
flags.DEFINE_integer("seed", 0, "Seed of the held-out split.")
flags.DEFINE_integer("batch_size", 8192, "Rows per accumulation step.")
flags.DEFINE_string("mesh", None, "Device mesh, e.g. 'data=8' or 'data=4,model=2'.")
flags.DEFINE_enum("method", "cholesky", ["cholesky", "eigh"], "Solve method for a fixed lambda.")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out_dir.")
flags.mark_flags_as_required(["source", "target", "out_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from linalign.align import fitting, parse_mesh
    from linalign.align.sources import open_embeddings

    src, tgt = open_embeddings(FLAGS.source), open_embeddings(FLAGS.target)
    grid = None if FLAGS.lam_grid is None else [float(x) for x in FLAGS.lam_grid]
    result = fitting.fit_sources(
        src, tgt, lam=FLAGS.lam, lam_grid=grid, val_fraction=FLAGS.val_fraction, seed=FLAGS.seed,
        batch_size=FLAGS.batch_size, mesh=parse_mesh(FLAGS.mesh) if FLAGS.mesh else None,
        method=FLAGS.method)
    out = fitting.write_fit(result, FLAGS.out_dir, overwrite=FLAGS.overwrite)
    logging.info("wrote %s", out)
    print(fitting._markdown(result.report))


if __name__ == "__main__":
    app.run(main)
