"""HELIX encrypted-inference and encrypted-fitting costs, every backend against the TenSEAL baseline.

  python experiments/bench_helix.py --mode=infer --shapes=768x16,4096x16 --reps=5
  python experiments/bench_helix.py --mode=fit --n=4096 --d_b=384 --d_a=768 [--fit_backend=seal-fit --max_columns=2]

Writes under --out (default docs/results/bench_fhe/helix, next to bench_fhe's table):
infer.{json,md,png}: provider evaluation time (median over reps), client round trip, per-query
and setup bytes, max error against plaintext scores, and the ratio to one-dot-per-class
TenSEAL, unsanitised replies; fit_<backend>_n<n>_b<d_b>_a<d_a>.json per fit run and fit.md, one
table of every fit run in the folder (wall time of each phase, bytes each way). The flooded
before/after table, as HELIX serves replies, is experiments/bench_fhe.py's results.md.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags, logging

from linalign.atomic import atomic_file, atomic_write

from linalign.fhe import base

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "infer", ["infer", "fit"], "What to measure.")
flags.DEFINE_list("shapes", ["576x5", "768x16"], "d x K shapes for inference.")
flags.DEFINE_list("backends", ["tenseal-dot", "seal-v1", "seal", "seal-coeff"], "Backends for inference "
                  "(seal-v1: the previous packed layout, for before/after; seal-coeff: coefficient encoding).")
flags.DEFINE_integer("reps", 5, "Timed repetitions per backend and shape.")
flags.DEFINE_string("params", "n8192", "CKKS preset.")
flags.DEFINE_integer("n", 4096, "Fitting: public-set rows.")
flags.DEFINE_integer("d_b", 384, "Fitting: client dimension.")
flags.DEFINE_integer("d_a", 768, "Fitting: provider dimension.")
flags.DEFINE_enum("fit_backend", "seal-coeff-fit", ["seal-coeff-fit", "seal-fit"], "Fitting: the backend.")
flags.DEFINE_integer("max_columns", 0, "Fitting: time only this many of the d_b + 1 columns and "
                     "extrapolate linearly (every column costs the same); 0 = all.")
flags.DEFINE_string("out", "docs/results/bench_fhe/helix", "Output directory.")


def _meta() -> dict:
    """The command and the machine (every benchmark result carries its CPU model)."""
    import sys

    from linalign.machine import machine_info

    return {"command": "python experiments/bench_helix.py " + " ".join(sys.argv[1:]), **machine_info()}


def bench_infer(out: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for shape in FLAGS.shapes:
        d, k = (int(v) for v in shape.split("x"))
        x = rng.standard_normal(d) / np.sqrt(d)
        v, c = rng.standard_normal((d, k)) / np.sqrt(d), rng.standard_normal(k)
        for name in FLAGS.backends:
            params = {"seal-v1": "n8192-v1", "seal-coeff": None}.get(name, FLAGS.params)  # None: its c4096
            client = base.make_client(name, d, k, params)
            provider = base.make_provider(client.public_context())
            head = provider.prepare(v, c)
            q = client.encrypt(x)
            times = []
            for _ in range(FLAGS.reps):
                t0 = time.perf_counter()
                r = provider.apply(q, head)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(FLAGS.reps):
                client.decrypt(provider.apply(client.encrypt(x), head))
            e2e = (time.perf_counter() - t0) / FLAGS.reps
            sizes = client.wire_sizes(provider, head)
            err = float(np.abs(client.decrypt(r) - (x @ v + c)).max())
            rows.append({"d": d, "k": k, "backend": name, "eval_ms": 1e3 * float(np.median(times)),
                         "roundtrip_ms": 1e3 * e2e, "max_abs_err": err, **sizes.to_dict()})
            logging.info("%s", rows[-1])
    for row in rows:
        ref = [r for r in rows if r["d"] == row["d"] and r["k"] == row["k"] and r["backend"] == "tenseal-dot"]
        row["speedup_vs_dot"] = ref[0]["eval_ms"] / row["eval_ms"] if ref else None
    meta = _meta()
    atomic_write(out / "infer.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Command: `{meta['command']}`", "", f"CPU {meta['cpu']} ({meta['cores']} cores; load average "
             f"{meta['load_average_1m']:.1f}).", "",
             "| d | K | backend | eval ms | round trip ms | per-query KB | setup MB | max err | x vs dot |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_dot']:.1f}" if r["speedup_vs_dot"] else "-"
        lines.append(f"| {r['d']} | {r['k']} | {r['backend']} | {r['eval_ms']:.1f} | {r['roundtrip_ms']:.1f} | "
                     f"{r['per_query_bytes'] / 1e3:.0f} | {r['setup_bytes'] / 1e6:.1f} | {r['max_abs_err']:.1e} | {sp} |")
    atomic_write(out / "infer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({f"{r['d']}x{r['k']}" for r in rows}, key=lambda s: [int(t) for t in s.split("x")])
    width = 0.8 / max(1, len(FLAGS.backends))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, scale, ylabel, title in (
            (axes[0], "eval_ms", 1.0, "ms (log scale)", "provider evaluation per query"),
            (axes[1], "per_query_bytes", 1e-3, "KB (log scale)", "bytes per query (up + down)")):
        for i, name in enumerate(FLAGS.backends):
            vals = [scale * next(r[key] for r in rows if f"{r['d']}x{r['k']}" == lab and r["backend"] == name)
                    for lab in labels]
            ax.bar(np.arange(len(labels)) + i * width, vals, width, label=name, color=f"C{i}")
        ax.set_xticks(np.arange(len(labels)) + width * (len(FLAGS.backends) - 1) / 2, labels)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_xlabel("d x K")
        ax.set_title(title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(f"HELIX inference, unsanitised replies ({meta['cpu']})", fontsize=10)
    fig.tight_layout()
    with atomic_file(out / "infer.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def bench_fit(out: pathlib.Path) -> None:
    from linalign.fhe import fitting

    rng = np.random.default_rng(0)
    n, d_b, d_a = FLAGS.n, FLAGS.d_b, FLAGS.d_a
    z_b = rng.standard_normal((n, d_b)) / np.sqrt(d_b)
    z_a = z_b @ rng.standard_normal((d_b, d_a)) / np.sqrt(d_b) + 0.1 * rng.standard_normal((n, d_a)) / np.sqrt(d_a)
    params = FLAGS.params if FLAGS.fit_backend == "seal-fit" else None
    t0 = time.perf_counter()
    client = fitting.make_fit_client(z_b, d_a, FLAGS.fit_backend, params)
    t_keys = time.perf_counter() - t0
    t0 = time.perf_counter()
    provider = fitting.make_fit_provider(client.public_context(), z_a)
    t_prep = time.perf_counter() - t0
    cross, run = fitting.encrypted_cross(client, provider, progress=True, max_columns=FLAGS.max_columns)
    cols = run["columns_run"]
    t_enc, t_eval, t_dec = run["client_encrypt_s"], run["provider_s"], run["client_decrypt_s"]
    up, down = run["up_bytes"], run["down_bytes"]
    zc = z_b - z_b.mean(0)
    ref = np.vstack([zc.T @ z_a, z_a.mean(0)[None]])[:cols]
    factor = (d_b + 1) / cols  # 1.0 when every column ran
    res = {"n": n, "d_b": d_b, "d_a": d_a, "backend": FLAGS.fit_backend, "layout": str(client.layout),
           "columns_timed": cols, "columns_total": d_b + 1, "extrapolation_factor": factor,
           "keygen_s": t_keys, "provider_setup_s": t_prep, "client_encrypt_s": t_enc * factor,
           "provider_eval_s": t_eval * factor, "client_decrypt_s": t_dec * factor,
           "total_s": t_keys + t_prep + (t_enc + t_eval + t_dec) * factor,
           "setup_bytes": len(client.public_context()), "up_bytes": int(up * factor),
           "down_bytes": int(down * factor),
           "max_abs_err": float(np.abs(cross - ref).max()), "max_abs_ref": float(np.abs(ref).max())}
    if FLAGS.fit_backend == "seal-fit":
        res.update(params=FLAGS.params,
                   rotations_per_column=client.layout.rotations_per_column + len(client.layout.fold_steps) + 1,
                   multiplies_per_column=client.layout.chunks * client.layout.d_pad,
                   galois_keys=len(client.layout.rotation_steps))
    else:
        res.update(params=client.params.to_dict(), rotations_per_column=0, galois_keys=0,
                   messages=client.num_messages, groups=client.geo.groups)
    res.update(_meta())
    print(json.dumps(res, indent=1))
    atomic_write(out / f"fit_{FLAGS.fit_backend}_n{n}_b{d_b}_a{d_a}.json", json.dumps(res, indent=1))
    _fit_table(out)


def _fit_table(out: pathlib.Path) -> None:
    """fit.md: every fit run in the folder, one row each."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("fit_*.json"))]
    lines = ["| backend | n | d_B x d_A | columns timed | keys s | provider setup s | client enc s | provider s | "
             "client dec s | total s | setup MB | up MB | down MB | rotations / column | max err / max | CPU | "
             "command |", "|" + "---|" * 17]
    for r in runs:
        lines.append(
            f"| {r['backend']} | {r['n']} | {r['d_b']} x {r['d_a']} | {r['columns_timed']} of {r['columns_total']} | "
            f"{r['keygen_s']:.1f} | {r['provider_setup_s']:.1f} | {r['client_encrypt_s']:.1f} | "
            f"{r['provider_eval_s']:.1f} | {r['client_decrypt_s']:.1f} | {r['total_s']:.1f} | "
            f"{r['setup_bytes'] / 1e6:.2f} | {r['up_bytes'] / 1e6:.1f} | {r['down_bytes'] / 1e6:.1f} | "
            f"{r['rotations_per_column']} | {r['max_abs_err'] / r['max_abs_ref']:.1e} | {r.get('cpu', '?')} | "
            f"`{r.get('command', '?')}` |")
    atomic_write(out / "fit.md", "Times of runs with fewer columns timed than in total are extrapolated.\n\n"
                 + "\n".join(lines) + "\n")


def main(argv):
    del argv
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    bench_infer(out) if FLAGS.mode == "infer" else bench_fit(out)


if __name__ == "__main__":
    app.run(main)
