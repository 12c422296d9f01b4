"""Benchmark: linalign's streamed ridge fit against scikit-learn Ridge and plain numpy.

  python experiments/bench_fit.py                      # n=200,000, d_b=768, d_a=1024, float32
  python experiments/bench_fit.py --n=50000 --reps=1   # smaller

All fits see the same synthetic float32 data in one run (Z_B with mean 1, Z_A = Z_B W + noise)
and solve the same problem (centred ridge, lambda fixed). Prints, for the end-to-end fit:
linalign, sklearn Ridge(solver="cholesky", fit_intercept=True), a straightforward numpy
streaming implementation, and the time ratios; then the accumulation step alone against a bare
jitted matmul of the same shapes (X^T X and X^T Y), interleaved rep by rep because the machine
is shared and its speed drifts. Expected on a quiet 2-core machine: linalign >= 2x faster than
sklearn end to end, accumulation >= 0.8x the bare matmul.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from linalign import align

flags.DEFINE_integer("n", 200_000, "Rows.")
flags.DEFINE_integer("d_b", 768, "Source width.")
flags.DEFINE_integer("d_a", 1024, "Target width.")
flags.DEFINE_integer("batch", 8192, "Rows per streamed batch (linalign and numpy).")
flags.DEFINE_float("lam", 10.0, "Ridge strength.")
flags.DEFINE_integer("reps", 3, "End-to-end repetitions (interleaved; medians reported).")
flags.DEFINE_integer("acc_reps", 10, "Accumulation-step repetitions (interleaved).")
flags.DEFINE_integer("chunk_rows", None, "Rows per compiled accumulation step (default: the library's).")
flags.DEFINE_bool("sklearn", True, "Include scikit-learn (needs ~2 extra copies of the data).")
FLAGS = flags.FLAGS


def make_data(n, d_b, d_a, seed=0):
    rng = np.random.default_rng(seed)
    z_b = np.empty((n, d_b), np.float32)
    z_a = np.empty((n, d_a), np.float32)
    w = (rng.standard_normal((d_b, d_a)) / np.sqrt(d_b)).astype(np.float32)
    for i in range(0, n, 20000):  # chunked to keep float64 temporaries small
        xb = rng.standard_normal((min(20000, n - i), d_b), dtype=np.float32) + 1.0
        z_b[i:i + len(xb)] = xb
        z_a[i:i + len(xb)] = xb @ w + 0.5 * rng.standard_normal((len(xb), d_a), dtype=np.float32)
    return z_b, z_a


def fit_linalign(z_b, z_a, lam, batch):
    acc = align.Accumulator(z_b.shape[1], z_a.shape[1], chunk_rows=FLAGS.chunk_rows)
    for i in range(0, len(z_b), batch):
        acc.add(z_b[i:i + batch], z_a[i:i + batch])
    w, b = align.solve(acc.stats, lam)
    return np.asarray(w), np.asarray(b)


def fit_sklearn(z_b, z_a, lam):
    from sklearn.linear_model import Ridge

    m = Ridge(alpha=lam, solver="cholesky", fit_intercept=True).fit(z_b, z_a)
    return m.coef_.T, m.intercept_


def fit_numpy_streaming(z_b, z_a, lam, batch):
    """The obvious streaming version: uncentred float32 products, accumulated in float64."""
    d_b, d_a = z_b.shape[1], z_a.shape[1]
    g_bb = np.zeros((d_b, d_b))
    g_ba = np.zeros((d_b, d_a))
    s_b, s_a = np.zeros(d_b), np.zeros(d_a)
    for i in range(0, len(z_b), batch):
        xb, xa = z_b[i:i + batch], z_a[i:i + batch]
        g_bb += xb.T @ xb
        g_ba += xb.T @ xa
        s_b += xb.sum(0)
        s_a += xa.sum(0)
    n = len(z_b)
    mu_b, mu_a = s_b / n, s_a / n
    c_bb = g_bb - n * np.outer(mu_b, mu_b)
    c_ba = g_ba - n * np.outer(mu_b, mu_a)
    w = np.linalg.solve(c_bb + lam * np.eye(d_b), c_ba)
    return w, mu_a - mu_b @ w


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def rel_err(w, w_ref):
    return float(np.linalg.norm(np.asarray(w, np.float64) - w_ref) / np.linalg.norm(w_ref))


def main(argv):
    del argv
    n, d_b, d_a, batch, lam = FLAGS.n, FLAGS.d_b, FLAGS.d_a, FLAGS.batch, FLAGS.lam
    print(f"data: n={n} d_b={d_b} d_a={d_a} float32, batch={batch}, lambda={lam}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    z_b, z_a = make_data(n, d_b, d_a)

    # Compile once on a small slice so the end-to-end timings are steady state (compile time
    # is reported separately).
    t_compile, _ = timed(fit_linalign, z_b[:2 * batch + 7], z_a[:2 * batch + 7], lam, batch)
    names = ["linalign", "numpy streaming"] + (["sklearn Ridge"] if FLAGS.sklearn else [])
    fns = {"linalign": lambda: fit_linalign(z_b, z_a, lam, batch),
           "numpy streaming": lambda: fit_numpy_streaming(z_b, z_a, lam, batch),
           "sklearn Ridge": lambda: fit_sklearn(z_b, z_a, lam)}
    times = {k: [] for k in names}
    results = {}
    for rep in range(FLAGS.reps):
        for k in names:
            dt, results[k] = timed(fns[k])
            times[k].append(dt)
            print(f"  rep {rep} {k:16s} {dt:7.2f} s", flush=True)
    med = {k: float(np.median(v)) for k, v in times.items()}

    # float64 reference solution from float64 statistics of the same float32 data.
    w_ref, _ = fit_numpy_streaming(z_b.astype(np.float64), z_a.astype(np.float64), lam, 20000)
    print("\nend to end (median of %d; a %.2f s warm-up fit on %d rows, which compiles, not included):"
          % (FLAGS.reps, t_compile, 2 * batch + 7))
    for k in names:
        print(f"  {k:16s} {med[k]:7.2f} s   rel. error of W vs float64: {rel_err(results[k][0], w_ref):.2e}")
    if FLAGS.sklearn:
        print(f"  speedup linalign vs sklearn Ridge: {med['sklearn Ridge'] / med['linalign']:.2f}x")
    print(f"  speedup linalign vs numpy streaming: {med['numpy streaming'] / med['linalign']:.2f}x")

    # Accumulation step alone: one batch, device-resident, against the bare products.
    xb, xa = jnp.asarray(z_b[:batch]), jnp.asarray(z_a[:batch])
    hb, ha = z_b[batch:2 * batch], z_a[batch:2 * batch]
    bare = jax.jit(lambda x, y: (jnp.dot(x.T, x), jnp.dot(x.T, y)))
    acc_dev = align.Accumulator(d_b, d_a, chunk_rows=FLAGS.chunk_rows)
    acc_host = align.Accumulator(d_b, d_a, chunk_rows=FLAGS.chunk_rows)
    steps = {
        "bare matmul": lambda: bare(xb, xa)[0],
        "accumulate (device batch)": lambda: acc_dev.add(xb, xa)._stats.c_bb,
        "accumulate (numpy batch, checked)": lambda: acc_host.add(hb, ha)._stats.c_bb,
    }
    for f in steps.values():
        jax.block_until_ready(f())
    st = {k: [] for k in steps}
    for _ in range(FLAGS.acc_reps):
        for k, f in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            st[k].append(time.perf_counter() - t)
    flops = 2.0 * batch * d_b * (d_b + d_a)
    t_bare = float(np.median(st["bare matmul"]))
    print(f"\naccumulation step, {batch} x ({d_b} + {d_a}) rows (median of {FLAGS.acc_reps}, interleaved):")
    for k, v in st.items():
        t = float(np.median(v))
        print(f"  {k:34s} {1e3 * t:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  ratio to bare {t_bare / t:.2f}")


if __name__ == "__main__":
    app.run(main)
