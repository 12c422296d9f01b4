"""Benchmark: linalign's streamed ridge fit against scikit-learn Ridge and plain numpy.

  python experiments/bench_fit.py                      # n=200,000, d_b=768, d_a=1024, float32
  python experiments/bench_fit.py --n=50000 --reps=1   # smaller
  python experiments/bench_fit.py --out=docs/results/bench_fit   # also write results.{json,md}

"linalign" is the current path (Accumulator, then the float64 host solve; on one CPU device the
batch products run in numpy's BLAS, whose syrk computes one triangle of Z_B^T Z_B, and
"linalign, jitted step" is the same fit with the jitted XLA step instead); with --before=REV
the same run also times the code of git revision REV (its stats.py and solve.py loaded from
git: float32 accumulation and a float32 jax Cholesky), so "not slower than before" is measured
side by side. "linalign auto" is ``linalign.fit(lam="auto")``: per-fold accumulation and exact
5-fold CV over 13 lambdas.

All fits see the same synthetic float32 data in one run (Z_B with mean 1, Z_A = Z_B W + noise)
and solve the same problem (centred ridge, lambda fixed). Prints, for the end-to-end fit:
linalign, sklearn Ridge(solver="cholesky", fit_intercept=True), a straightforward numpy
streaming implementation, and the time ratios; then the accumulation step alone against a bare
jitted matmul of the same shapes (X^T X and X^T Y), interleaved rep by rep because the machine
is shared and its speed drifts. Expected on a quiet 2-core machine: linalign >= 2x faster than
sklearn end to end; the host-BLAS step faster than the bare (full-Gram) XLA matmul.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from linalign import align
from linalign.machine import cpu_model

flags.DEFINE_integer("n", 200_000, "Rows.")
flags.DEFINE_integer("d_b", 768, "Source width.")
flags.DEFINE_integer("d_a", 1024, "Target width.")
flags.DEFINE_integer("batch", 8192, "Rows per streamed batch (linalign and numpy).")
flags.DEFINE_float("lam", 10.0, "Ridge strength.")
flags.DEFINE_integer("reps", 3, "End-to-end repetitions (interleaved; medians reported).")
flags.DEFINE_integer("acc_reps", 10, "Accumulation-step repetitions (interleaved).")
flags.DEFINE_integer("chunk_rows", None, "Rows per compiled accumulation step (default: the library's).")
flags.DEFINE_bool("sklearn", True, "Include scikit-learn (needs ~2 extra copies of the data).")
flags.DEFINE_string("before", None, "Git revision whose stats.py/solve.py are timed as 'before'.")
flags.DEFINE_bool("auto", True, "Include linalign.fit(lam='auto') (5-fold CV).")
flags.DEFINE_string("out", None, "Folder for results.json and results.md.")
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


def fit_linalign(z_b, z_a, lam, batch, host_blas=None):
    acc = align.Accumulator(z_b.shape[1], z_a.shape[1], chunk_rows=FLAGS.chunk_rows,
                            host_blas=host_blas)
    for i in range(0, len(z_b), batch):
        acc.add(z_b[i:i + batch], z_a[i:i + batch])
    w, b = align.solve(acc.stats, lam)
    return np.asarray(w), np.asarray(b)


def load_before(rev):
    """The revision's stats and solve modules, loaded from git under private names."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    mods = {}
    tmp = tempfile.mkdtemp(prefix="bench_fit_before_")
    for name in ("stats", "solve"):
        src = subprocess.run(["git", "show", f"{rev}:linalign/align/{name}.py"], check=True,
                             capture_output=True, text=True).stdout
        src = src.replace("from linalign.align.stats import", "from _before_stats import")
        path = f"{tmp}/_before_{name}.py"
        with open(path, "w") as f:  # a throwaway module file, not a result
            f.write(src)
        spec = importlib.util.spec_from_file_location(f"_before_{name}", path)
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[f"_before_{name}"] = mods[name]
        spec.loader.exec_module(mods[name])
    return mods


def fit_before(mods, z_b, z_a, lam, batch):
    acc = mods["stats"].Accumulator(z_b.shape[1], z_a.shape[1], chunk_rows=FLAGS.chunk_rows)
    for i in range(0, len(z_b), batch):
        acc.add(z_b[i:i + batch], z_a[i:i + batch])
    w, b = mods["solve"].solve(acc.stats, lam)
    return np.asarray(w), np.asarray(b)


def fit_auto(z_b, z_a, batch):
    from linalign.align.fitting import fit

    m = fit(z_b, z_a, "auto", heldout=0.0, batch_size=batch)
    return np.asarray(m.w), np.asarray(m.b), m.metadata.lam


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
    before = load_before(FLAGS.before) if FLAGS.before else None
    fit_linalign(z_b[:2 * batch + 7], z_a[:2 * batch + 7], lam, batch, host_blas=False)
    names = (["linalign", "linalign, jitted step"] + ([f"before ({FLAGS.before})"] if before else [])
             + (["linalign auto"] if FLAGS.auto else []) + ["numpy streaming"]
             + (["sklearn Ridge"] if FLAGS.sklearn else []))
    fns = {"linalign": lambda: fit_linalign(z_b, z_a, lam, batch),
           "linalign, jitted step": lambda: fit_linalign(z_b, z_a, lam, batch, host_blas=False),
           f"before ({FLAGS.before})": lambda: fit_before(before, z_b, z_a, lam, batch),
           "linalign auto": lambda: fit_auto(z_b, z_a, batch),
           "numpy streaming": lambda: fit_numpy_streaming(z_b, z_a, lam, batch),
           "sklearn Ridge": lambda: fit_sklearn(z_b, z_a, lam)}
    if before:
        fit_before(before, z_b[:2 * batch + 7], z_a[:2 * batch + 7], lam, batch)
    if FLAGS.auto:
        fit_auto(z_b[:2 * batch + 7], z_a[:2 * batch + 7], batch)
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
    errs = {}
    for k in names:
        if k == "linalign auto":
            print(f"  {k:16s} {med[k]:7.2f} s   chose lambda {results[k][2]:.4g} by 5-fold CV")
            continue
        errs[k] = rel_err(results[k][0], w_ref)
        print(f"  {k:16s} {med[k]:7.2f} s   rel. error of W vs float64: {errs[k]:.2e}")
    ratios = {f"{k} / linalign": med[k] / med["linalign"] for k in names if k != "linalign"}
    for k, v in ratios.items():
        print(f"  time {k}: {v:.2f}x")

    # Accumulation step alone: one batch, device-resident, against the bare products.
    xb, xa = jnp.asarray(z_b[:batch]), jnp.asarray(z_a[:batch])
    hb, ha = z_b[batch:2 * batch], z_a[batch:2 * batch]
    bare = jax.jit(lambda x, y: (jnp.dot(x.T, x), jnp.dot(x.T, y)))
    acc_dev = align.Accumulator(d_b, d_a, chunk_rows=FLAGS.chunk_rows, host_blas=False)
    acc_host = align.Accumulator(d_b, d_a, chunk_rows=FLAGS.chunk_rows)
    steps = {
        "bare matmul": lambda: bare(xb, xa)[0],
        "jitted step (device batch)": lambda: acc_dev.add(xb, xa)._stats.c_bb,
        "host BLAS (numpy batch, checked)": lambda: acc_host.add(hb, ha)._stats.c_bb,
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
    steps_out = {}
    for k, v in st.items():
        t = float(np.median(v))
        steps_out[k] = {"ms": 1e3 * t, "ratio_to_bare": t_bare / t}
        print(f"  {k:34s} {1e3 * t:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  ratio to bare {t_bare / t:.2f}")
    if FLAGS.out:
        write_results(FLAGS.out, names, med, errs, ratios, steps_out, results)


def write_results(out, names, med, errs, ratios, steps_out, results):
    import os
    import sys

    from linalign.atomic import atomic_write, atomic_write_json

    os.makedirs(out, exist_ok=True)
    cmd = "PYTHONPATH=. python experiments/bench_fit.py " + " ".join(sys.argv[1:])
    rec = {"command": cmd, "cpu": cpu_model(), "cores": os.cpu_count(),
           "load_average_1_5_15min_at_end": [round(x, 1) for x in os.getloadavg()],
           "n": FLAGS.n, "d_b": FLAGS.d_b, "d_a": FLAGS.d_a, "lam": FLAGS.lam, "reps": FLAGS.reps,
           "seconds_median": med, "rel_error_w": errs, "time_ratios": ratios,
           "accumulation_step": steps_out,
           "auto_lambda": float(results["linalign auto"][2]) if "linalign auto" in results else None}
    atomic_write_json(os.path.join(out, "results.json"), rec, sort_keys=False)
    rows = "".join(f"| {k} | {med[k]:.2f} s | {errs.get(k, float('nan')):.1e} | "
                   f"{med[k] / med['linalign']:.2f}x |\n" for k in names)
    md = (f"# bench_fit\n\nCommand: `{cmd}`  \nCPU: {rec['cpu']} ({rec['cores']} cores), load "
          f"average at the end {rec['load_average_1_5_15min_at_end']}  \n"
          f"n={FLAGS.n}, {FLAGS.d_b} -> {FLAGS.d_a}, float32, lambda={FLAGS.lam}, medians of "
          f"{FLAGS.reps} interleaved repetitions.\n\n| fit | time | rel. error of W vs float64 | "
          f"time / linalign |\n|---|---|---|---|\n{rows}\n"
          + "".join(f"- {k}: {v['ms']:.1f} ms per step, {v['ratio_to_bare']:.2f}x of bare matmul\n"
                    for k, v in steps_out.items()))
    atomic_write(os.path.join(out, "results.md"), md)


if __name__ == "__main__":
    app.run(main)
