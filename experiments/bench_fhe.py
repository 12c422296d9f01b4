"""FHE backend comparison for HELIX: CKKS (TenSEAL, SEAL) against Concrete ML (TFHE).

Inference, for every backend over d x K (provider's head V [d, K], c [K] from a logistic
regression on a synthetic K-class task; queries are held-out points): client encrypt,
provider evaluate, client decrypt (median per query), bytes up/down, key sizes, setup time,
and agreement of decrypted argmax / scores with the plaintext head. Concrete ML also reports
the bit search, compile time and simulate / execute / clear-quantized agreement.
Fitting, for n public rows: the cross term through CKKS (``linalign.fhe.fitting``) and through
concrete-ml-extensions (``linalign.fhe.concrete_matmul``) run the first ``--fit_columns`` of
d_B (the slot fit ``--slot_fit_columns``, 0 = all) and extrapolate the per-column costs (marked
as such in the output); the coefficient fit (``linalign.fhe.coeff_fit``) runs every column.
Ratios are against the "tenseal-dot" baseline (the paper's TenSEAL setup).

  Full grid (about an hour on 2 shared cores):
    python experiments/bench_fhe.py
  Quick check:
    python experiments/bench_fhe.py --quick

Writes results.json, results.md and results.png under --out.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import traceback

import numpy as np
from absl import app, flags, logging

from linalign.atomic import atomic_file, atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["tenseal-dot", "seal-v1", "seal", "seal@n4096", "seal-coeff", "concrete"],
                  "Backends to compare; name@preset picks a CKKS preset for one backend (seal-v1 is "
                  "the previous packed layout, n8192-v1 chain: the 'before' of a before/after run; "
                  "seal-coeff the coefficient-encoded layer on its c4096 preset).")
flags.DEFINE_integer("flood_bits", 12, "Circuit privacy for the seal backends: every reply re-randomised and "
                     "flooded at this lambda_s, as HELIX serves them (rings that cannot carry it run "
                     "unsanitised, marked); -1 = unsanitised everywhere.")
flags.DEFINE_float("throughput_s", 3.0, "Seconds of back-to-back provider evaluations per seal cell for the "
                   "single-core throughput (queries/s); 0 = skip.")
flags.DEFINE_integer("batch", 4, "Throughput mode of the seal backend: queries per ciphertext (a power of "
                     "two; capped by the slots at each d); 1 = single queries only.")
flags.DEFINE_list("dims", ["384", "576", "768", "2048", "4096"], "Input widths d.")
flags.DEFINE_list("classes", ["2", "5", "16"], "Class counts K.")
flags.DEFINE_integer("queries", 16, "Encrypted queries per cell (fewer if over the budget).")
flags.DEFINE_float("cell_budget_s", 60.0, "Seconds one (backend, d, K) cell may spend on queries; "
                   "a cell whose predicted single-query time exceeds it is skipped with the reason.")
flags.DEFINE_string("params", "n8192", "CKKS preset for the seal backend (n16384 is tried when d does not "
                    "fit); seal-v1 and the TenSEAL backends use n8192-v1 unless name@preset says otherwise.")
flags.DEFINE_list("fit_n", ["4096", "16384"], "Public rows for the fitting phase.")
flags.DEFINE_integer("fit_db", 384, "Fitting: client (B) width.")
flags.DEFINE_integer("fit_da", 768, "Fitting: provider (A) width.")
flags.DEFINE_integer("fit_columns", 4, "Fitting: columns of Z_B actually run (0 = all), then extrapolated.")
flags.DEFINE_integer("slot_fit_columns", -1, "Fitting: columns the CKKS slot fit runs (-1 = --fit_columns, "
                     "0 = all d_B + 1: nothing extrapolated).")
flags.DEFINE_bool("skip_fit", False, "Skip the fitting phase.")
flags.DEFINE_bool("quick", False, "Small grid: d 384,768; K 2,5; n 4096; 2 fit columns; 6 queries.")
flags.DEFINE_string("out", "results/bench_fhe", "Output directory.")
flags.DEFINE_bool("plot_only", False, "Re-render results.md and results.png from --out/results.json.")


def _task(d: int, k: int, seed: int = 0):
    """Synthetic K-class task in d dims, not trivially separable (plain accuracy ~0.8-0.97).

    Class centres have norm ~a/sqrt(d) against unit-norm isotropic noise, so the Bayes margin
    between two classes is ~a standard deviations whatever d is; a grows with K to keep the
    many-class tasks learnable from 1,000 training points.

    Returns:
      (V [d,K], c [K], train [1000,d] (also the calibration set), held-out [300,d], labels [300]).
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed + 1000 * d + k)
    a = 2.5 + 0.25 * k
    centers_kd = rng.standard_normal((k, d)) * (a / d)
    y = rng.integers(0, k, size=1300)
    x = (centers_kd[y] + rng.standard_normal((1300, d)) / np.sqrt(d)).astype(np.float32)
    lr = LogisticRegression(max_iter=500).fit(x[:1000], y[:1000])
    if k == 2:  # sklearn's binary form has one margin; expand to two scores with the same argmax
        v = np.concatenate([-lr.coef_.T / 2, lr.coef_.T / 2], axis=1)
        c = np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
    else:
        v, c = lr.coef_.T, lr.intercept_
    return v.astype(np.float64), c.astype(np.float64), x[:1000], x[1000:], y[1000:]


def _ckks_cell(name, d, k, v, c, queries):
    from linalign.fhe import base
    from linalign.fhe.privacy import FloodPolicy

    name, _, preset = name.partition("@")
    first = preset or {"seal": FLAGS.params, "seal-coeff": "c4096"}.get(name, "n8192-v1")
    big = "n16384" if first in ("n8192", "n4096") else first if name == "seal-coeff" else "n16384-v1"
    last_err = None
    for params in dict.fromkeys([first, big]):
        try:
            t0 = time.perf_counter()
            client = base.make_client(name, d, k, params)
            keygen_s = time.perf_counter() - t0
            break
        except base.FHEError as e:
            last_err = e
    else:
        raise last_err
    provider = base.make_provider(client.public_context())
    privacy = {"sanitised": False, "flood_bound_B": None, "flood_std_slot": None, "flood_std_score": None}
    t0 = time.perf_counter()
    if name.startswith("seal") and FLAGS.flood_bits >= 0:
        policy = FloodPolicy(FLAGS.flood_bits)
        norm = float(np.linalg.norm(queries, axis=1).max())
        bound = provider.calibrate(v, c, norm, policy)
        privacy["flood_bound_B"] = bound
        try:
            std = provider.enable_privacy(bound, policy)
            reps = getattr(provider, "replicas", 1)
            privacy.update(sanitised=True, flood_std_slot=std, flood_std_score=std / np.sqrt(reps))
        except base.FHEError as e:
            privacy["unsanitised_because"] = str(e)
            privacy["flood_std_score_if_sanitised"] = (policy.decoded_std(bound, provider.params.poly_modulus_degree)
                                                       / np.sqrt(getattr(provider, "replicas", 1)))
    head = provider.prepare(v, c)
    prepare_s = time.perf_counter() - t0
    sk = client.secret_key_bytes() if hasattr(client, "secret_key_bytes") else b""

    def one(z):
        t0 = time.perf_counter()
        q = client.encrypt(z)
        t1 = time.perf_counter()
        r = provider.apply(q, head)
        t2 = time.perf_counter()
        s = client.decrypt(r)
        return s, (t1 - t0, t2 - t1, time.perf_counter() - t2), len(q), len(r)

    setup = {"params": params if isinstance(params, str) else str(params), "keygen_s": keygen_s,
             "setup_s": prepare_s, "eval_key_bytes": len(client.public_context()),
             "secret_key_bytes": len(sk), **privacy}
    layout = getattr(client, "layout", None)
    if layout is not None and hasattr(layout, "rotation_steps"):
        setup["galois_steps"] = list(layout.rotation_steps)
    if name.startswith("seal") and FLAGS.throughput_s > 0:
        # One provider thread evaluating distinct queries back to back (what one core serves).
        qs = [client.encrypt(z) for z in queries[:4]]
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < FLAGS.throughput_s:
            provider.apply(qs[n % len(qs)], head)
            n += 1
        setup["throughput_qps_1core"] = n / (time.perf_counter() - t0)
        if name in ("seal", "seal-coeff") and FLAGS.batch > 1:
            setup["batched"] = _batched_throughput(name, d, k, v, c, queries, params, provider.layout)
    return one, setup


def _batched_throughput(name, d, k, v, c, queries, params, single_layout):
    """Queries per second of one provider thread when each message carries B queries.

    B = min(--batch, what the layout holds: S / d' for seal, N / d for seal-coeff); the provider
    is sanitised like the single-query one (flooded at its own calibrated bound). Also checks the
    batched scores against the plaintext head.
    """
    from linalign.fhe import base
    from linalign.fhe.privacy import FloodPolicy

    if name == "seal":
        b = min(FLAGS.batch, single_layout.slots // single_layout.d_pad)
    else:
        b = min(FLAGS.batch, single_layout.n // d)
    if b < 2:
        return {"skipped": f"d={d} leaves room for one query per ciphertext"}
    client = base.make_client(name, d, k, params, batch=b)
    provider = base.make_provider(client.public_context())
    lay = client.layout
    out = {"batch": b, "galois_steps": list(getattr(lay, "rotation_steps", [])),
           "rotations": getattr(lay, "rotations", 0), "eval_key_bytes": len(client.public_context())}
    if FLAGS.flood_bits >= 0:
        policy = FloodPolicy(FLAGS.flood_bits)
        norm = float(np.linalg.norm(queries, axis=1).max())
        bound = provider.calibrate(v, c, norm, policy)
        out["flood_std_score"] = provider.enable_privacy(bound, policy) / np.sqrt(provider.replicas)
    head = provider.prepare(v, c)
    groups = [queries[i:i + b] for i in range(0, len(queries) - b + 1, b)] or [queries[:b]]
    qs = [client.encrypt_batch(g) for g in groups]
    replies = [provider.apply(q, head) for q in qs]
    got = np.concatenate([client.decrypt_batch(r, len(g)) for r, g in zip(replies, groups)])
    ref = np.concatenate(groups).astype(np.float64) @ v + c
    out.update(up_bytes_per_query=len(qs[0]) / b, down_bytes_per_query=len(replies[0]) / b,
               max_abs_err_vs_plain=float(np.abs(got - ref).max()),
               argmax_agreement=float(np.mean(got.argmax(1) == ref.argmax(1))))
    times, n, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < FLAGS.throughput_s:
        t1 = time.perf_counter()
        provider.apply(qs[n % len(qs)], head)
        times.append(time.perf_counter() - t1)
        n += 1
    out["eval_ms_per_ciphertext"] = 1e3 * float(np.median(times))
    out["throughput_qps_1core"] = n * b / (time.perf_counter() - t0)
    return out


def _concrete_cell(d, k, v, c, calib, held_out, held_labels):
    """Bit search on the held-out set (300 points, labels), then compile and key generation."""
    from linalign.fhe import concrete_backend as cb

    t0 = time.perf_counter()
    search = cb.search_n_bits(v, c, calib, labels_n=held_labels, eval_nd=held_out)
    search_s = time.perf_counter() - t0
    provider = cb.ConcreteProvider.compile(v, c, calib, search.n_bits)
    client = cb.ConcreteClient(provider.client_spec())
    provider.attach(client.public_context())
    queries = held_out[: FLAGS.queries]
    sim = provider.predict_scores(queries, fhe="simulate")
    clear_q = provider.predict_scores(queries, fhe="disable")
    extra = {"n_bits": search.n_bits, "bit_search_s": search_s,
             "bit_search_accuracy": {str(b): a for b, a in search.quantized_accuracy.items()},
             "clear_accuracy": search.clear_accuracy,
             "compile_s": provider.report.compile_s, "max_bit_width": provider.report.max_bit_width,
             "pbs_count": provider.report.pbs_count, "client_spec_bytes": len(provider.client_spec()),
             "server_zip_bytes": provider.report.server_zip_bytes,
             "simulate_vs_clear_quantized_max_abs": float(np.abs(sim - clear_q).max())}
    rows = {"i": 0}

    def one(z):
        t0 = time.perf_counter()
        q = client.encrypt(z)
        t1 = time.perf_counter()
        r = provider.apply(q)
        t2 = time.perf_counter()
        s = client.decrypt(r)
        i = rows["i"]
        rows["i"] += 1
        rows.setdefault("exec_vs_clear_q", []).append(float(np.abs(s - clear_q[i]).max()))
        return s, (t1 - t0, t2 - t1, time.perf_counter() - t2), len(q), len(r)

    setup = {"params": "tfhe (Concrete ML default)", "keygen_s": client.keygen_s,
             "setup_s": search_s + provider.report.compile_s,
             "eval_key_bytes": len(client.public_context()), "secret_key_bytes": None, **extra}
    return one, setup, rows


def bench_cell(name: str, d: int, k: int, predicted_s: float | None) -> dict:
    row = {"backend": name, "d": d, "k": k}
    if predicted_s is not None and predicted_s > FLAGS.cell_budget_s:
        row["skipped"] = f"predicted {predicted_s:.0f} s per query > cell budget {FLAGS.cell_budget_s:.0f} s"
        return row
    v, c, calib, held_out, held_labels = _task(d, k)
    queries, labels = held_out[: FLAGS.queries], held_labels[: FLAGS.queries]
    conc_rows = None
    try:
        if name == "concrete":
            one, setup, conc_rows = _concrete_cell(d, k, v, c, calib, held_out, held_labels)
        else:
            one, setup = _ckks_cell(name, d, k, v, c, queries)
    except Exception as e:  # recorded, the grid goes on
        row["skipped"] = f"{type(e).__name__}: {e}"
        logging.warning("%s d=%d K=%d failed: %s", name, d, k, traceback.format_exc(limit=3))
        return row
    row.update(setup)
    scores, times, up, down = [], [], 0, 0
    t_start = time.perf_counter()
    for z in queries:
        s, t, up, down = one(z.astype(np.float64))
        scores.append(s)
        times.append(t)
        if time.perf_counter() - t_start > FLAGS.cell_budget_s:
            break
    scores = np.array(scores)
    ref = queries[: len(scores)].astype(np.float64) @ v + c
    t = np.median(np.array(times), axis=0)
    row.update({"queries_run": len(scores), "encrypt_ms": 1e3 * t[0], "eval_ms": 1e3 * t[1],
                "decrypt_ms": 1e3 * t[2], "up_bytes": up, "down_bytes": down,
                "argmax_agreement": float(np.mean(scores.argmax(1) == ref.argmax(1))),
                "accuracy_encrypted": float(np.mean(scores.argmax(1) == labels[: len(scores)])),
                "accuracy_plain": float(np.mean(ref.argmax(1) == labels[: len(scores)])),
                "max_abs_err_vs_plain": float(np.abs(scores - ref).max()),
                "score_spread": float(np.ptp(ref))})
    row["max_err_over_range"] = row["max_abs_err_vs_plain"] / max(row["score_spread"], 1e-300)
    if conc_rows is not None:
        row["execute_vs_clear_quantized_max_abs"] = float(np.max(conc_rows["exec_vs_clear_q"]))
    logging.info("%s", {k_: v_ for k_, v_ in row.items() if not isinstance(v_, dict)})
    return row


def bench_infer(save=lambda rows: None) -> list[dict]:
    rows = []
    last: dict[str, tuple[int, int, float]] = {}
    for d in map(int, FLAGS.dims):
        for k in map(int, FLAGS.classes):
            for name in FLAGS.backends:
                pred = None
                if name in last:  # conservative: cost linear in d * K (TenSEAL dots/matmul)
                    d0, k0, t0 = last[name]
                    pred = t0 * (d * k) / (d0 * k0)
                row = bench_cell(name, d, k, pred)
                if "eval_ms" in row:
                    last[name] = (d, k, (row["encrypt_ms"] + row["eval_ms"] + row["decrypt_ms"]) / 1e3)
                rows.append(row)
                save(rows)
    for row in rows:
        base_row = next((r for r in rows if r["backend"] == "tenseal-dot" and r["d"] == row["d"]
                         and r["k"] == row["k"] and "eval_ms" in r), None)
        if base_row and "eval_ms" in row:
            row["eval_speedup_vs_dot"] = base_row["eval_ms"] / row["eval_ms"]
            row["bytes_ratio_vs_dot"] = (row["up_bytes"] + row["down_bytes"]) / (
                base_row["up_bytes"] + base_row["down_bytes"])
    return rows


def bench_fit(save=lambda rows: None) -> list[dict]:
    from linalign.fhe import concrete_matmul

    rows = []
    d_b, d_a = FLAGS.fit_db, FLAGS.fit_da
    cols = FLAGS.fit_columns or d_b
    for n in map(int, FLAGS.fit_n):
        rng = np.random.default_rng(n)
        z_b = rng.standard_normal((n, d_b)) / np.sqrt(d_b) + 0.05
        z_a = z_b @ rng.standard_normal((d_b, d_a)) / np.sqrt(d_b) + 0.1 * rng.standard_normal((n, d_a)) / np.sqrt(d_a)
        zc_b = z_b - z_b.mean(0)
        ref = zc_b.T @ z_a  # centred cross term [d_B, d_A]
        scale = cols and d_b / cols
        # concrete-ml-extensions
        try:
            cross, cost = concrete_matmul.encrypted_cross_covariance(zc_b, z_a, bits=8, feature_rows=cols)
            err = cross - ref[:cols]
            rows.append({"method": "concrete-ml-extensions", "n": n, "d_b": d_b, "d_a": d_a,
                         "columns_run": cols, "extrapolated_to_d_b": cols < d_b,
                         "keygen_s": cost.keygen_s, "key_bytes": cost.key_bytes,
                         "client_encrypt_s": cost.encrypt_s * scale, "provider_s": cost.provider_s * scale,
                         "client_decrypt_s": cost.decrypt_s * scale,
                         "up_bytes": int(cost.up_bytes * scale), "down_bytes": int(cost.down_bytes * scale),
                         "chunks": cost.chunks,
                         "rel_fro_err": float(np.linalg.norm(err) / np.linalg.norm(ref[:cols])),
                         "max_abs_err": float(np.abs(err).max()), "max_abs_ref": float(np.abs(ref[:cols]).max())})
        except Exception as e:
            rows.append({"method": "concrete-ml-extensions", "n": n, "skipped": f"{type(e).__name__}: {e}"})
        logging.info("%s", rows[-1])
        # CKKS (linalign.fhe.fitting)
        try:
            from linalign.fhe import fitting

            t0 = time.perf_counter()
            client = fitting.FitClient(z_b, d_a, FLAGS.params)
            keygen_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            provider = fitting.FitProvider(client.public_context(), z_a)
            provider_setup_s = time.perf_counter() - t0
            slot_cols = cols if FLAGS.slot_fit_columns < 0 else FLAGS.slot_fit_columns
            got, run = fitting.encrypted_cross(client, provider, max_columns=slot_cols, progress=True)
            ran = run["columns_run"]
            sc = client.num_columns / ran
            want = np.vstack([ref, z_a.mean(0)[None]])[:ran]
            rows.append({"method": "ckks (linalign.fhe.fitting)", "n": n, "d_b": d_b, "d_a": d_a,
                         "columns_run": ran, "extrapolated_to_d_b": ran < client.num_columns,
                         "keygen_s": keygen_s, "key_bytes": len(client.public_context()),
                         "provider_setup_s": provider_setup_s, "flood_bound_B": provider.bound,
                         "flood_std_slot": provider.flood_std,
                         "galois_keys": len(client.layout.rotation_steps),
                         "rotations_per_column": client.layout.rotations_per_column + len(client.layout.fold_steps) + 1,
                         "multiplies_per_column": client.layout.chunks * client.layout.d_pad,
                         "layout": str(client.layout),
                         "client_encrypt_s": run["client_encrypt_s"] * sc, "provider_s": run["provider_s"] * sc,
                         "client_decrypt_s": run["client_decrypt_s"] * sc,
                         "up_bytes": int(run["up_bytes"] * sc), "down_bytes": int(run["down_bytes"] * sc),
                         "rel_fro_err": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
                         "max_abs_err": float(np.abs(got - want).max()), "max_abs_ref": float(np.abs(want).max())})
        except Exception as e:
            rows.append({"method": "ckks (linalign.fhe.fitting)", "n": n, "skipped": f"{type(e).__name__}: {e}"})
        logging.info("%s", rows[-1])
        # CKKS, coefficient encoding (linalign.fhe.coeff_fit): every column, nothing extrapolated
        try:
            rows.append(_bench_coeff_fit(n, z_b, z_a, ref))
            slot = next((r for r in rows if r.get("method") == "ckks (linalign.fhe.fitting)" and r.get("n") == n
                         and "provider_s" in r), None)
            if slot is not None:
                rows[-1]["speedup_vs_slots"] = _fit_total(slot) / _fit_total(rows[-1])
        except Exception as e:
            rows.append({"method": "ckks coefficients (linalign.fhe.coeff_fit)", "n": n,
                         "skipped": f"{type(e).__name__}: {e}"})
        logging.info("%s", rows[-1])
        save(rows)
    return rows


def _fit_total(r: dict) -> float:
    """Seconds of a whole fit: keys, the provider's setup (plaintexts, calibration), every column."""
    return r["keygen_s"] + r.get("provider_setup_s", 0.0) + r["client_encrypt_s"] + r["provider_s"] + r["client_decrypt_s"]


def _bench_coeff_fit(n: int, z_b: np.ndarray, z_a: np.ndarray, ref: np.ndarray) -> dict:
    from linalign.fhe import coeff_fit, fitting

    d_b, d_a = z_b.shape[1], z_a.shape[1]
    t0 = time.perf_counter()
    client = coeff_fit.CoeffFitClient(z_b, d_a)
    keygen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    provider = coeff_fit.CoeffFitProvider(client.public_context(), z_a)
    provider_setup_s = time.perf_counter() - t0
    got, run = fitting.encrypted_cross(client, provider)
    want = np.vstack([ref, z_a.mean(0)[None]])
    lay = client.layout
    return {"method": "ckks coefficients (linalign.fhe.coeff_fit)", "n": n, "d_b": d_b, "d_a": d_a,
            "columns_run": d_b + 1, "extrapolated_to_d_b": False,
            "keygen_s": keygen_s, "key_bytes": len(client.public_context()),
            "provider_setup_s": provider_setup_s, "flood_bound_B": provider.bound,
            "flood_std_value": provider.flood_std, "reply_drop_bits": provider.drop_bits,
            "params": client.params.to_dict(),
            "layout": {"rows_per_chunk": lay.chunk, "za_cols_per_poly": lay.cols, "columns_per_group": lay.batch,
                       "row_chunks_T": lay.queries, "reply_polys_per_group_G": lay.replies,
                       "groups_J": client.geo.groups, "messages": client.num_messages},
            "rotations_per_column": 0, "galois_keys": 0,
            "client_encrypt_s": run["client_encrypt_s"], "provider_s": run["provider_s"],
            "client_decrypt_s": run["client_decrypt_s"], "up_bytes": run["up_bytes"], "down_bytes": run["down_bytes"],
            "rel_fro_err": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
            "max_abs_err": float(np.abs(got - want).max()), "max_abs_ref": float(np.abs(want).max())}


def _plot_fit(fit: list[dict], path: pathlib.Path) -> None:
    """One whole fit per method and n: total seconds (log scale) and where the time goes (shares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in fit if "provider_s" in r]
    if not rows:
        return
    phases = [("keygen_s", "client keys"), ("provider_setup_s", "provider setup"),
              ("client_encrypt_s", "client encrypt"), ("provider_s", "provider products"),
              ("client_decrypt_s", "client decrypt")]
    labels = [f"{r['method'].split(' (')[0]}\nn={r['n']}" + (" (extrapolated)" if r["extrapolated_to_d_b"] else "")
              for r in rows]
    vals = np.array([[r.get(key) or 0.0 for key, _ in phases] for r in rows])
    total = vals.sum(1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(10, 4.4 * len(rows)), 4.8))
    x = np.arange(len(rows))
    ax.bar(x, total, color=[f"C{7 + (i % 3)}" for i in range(len(rows))])
    for i, r in enumerate(rows):
        txt = f"{total[i]:.1f} s"
        if r.get("speedup_vs_slots"):
            txt += f"\n{r['speedup_vs_slots']:.1f}x faster than ckks"
        ax.annotate(txt, (i, total[i]), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(total.min() / 3, total.max() * 8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("seconds, whole fit (d_B + 1 columns), log scale")
    ax.set_title("total")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    share = 100 * vals / total[:, None]
    bottom = np.zeros(len(rows))
    for b, (_, name) in enumerate(phases):
        ax2.bar(x, share[:, b], bottom=bottom, color=f"C{b}", label=name)
        bottom += share[:, b]
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("% of the fit's time")
    ax2.set_title("time per phase")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(f"HELIX encrypted fit, {rows[0]['d_b']} -> {rows[0]['d_a']}")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _fmt(v, f):
    return "-" if v is None else format(v, f)


def _markdown(infer: list[dict], fit: list[dict], meta: dict) -> str:
    out = [f"# FHE backends for HELIX ({meta['date']})", "", f"Command: `{meta['command']}`", "",
           meta["machine"], "", "## Inference (per query; median)", "",
           "`seal-v1` is the previous packed layout on the n8192-v1 chain (before), `seal` the current one "
           "(after, slots), `seal-coeff` the coefficient-encoded layer on N = 4096 (after, no rotation); all "
           "three serve replies the way HELIX does: re-randomised and flooded at lambda_s = "
           f"{meta.get('flood_bits', 12)} (column 'flooded'). `seal@n4096` cannot carry a flooded reply "
           "(its flood std is listed) and runs unsanitised. TenSEAL and Concrete ML replies are not "
           "sanitised. q/s: one provider thread evaluating queries back to back; 'batched' packs B "
           "queries of one client into each message (`seal`, `seal-coeff`).", "",
           "| d | K | backend | flooded | enc ms | eval ms | dec ms | up KB | down KB | keys MB | q/s 1 core | "
           "agree | max err | err / range | B | flood std / score | eval x vs dot | notes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in infer:
        if "skipped" in r:
            out.append(f"| {r['d']} | {r['k']} | {r['backend']} |" + " |" * 14 + f" skipped: {r['skipped']} |")
            continue
        if r["backend"] == "concrete":
            note = (f"n_bits={r['n_bits']}, max bits {r['max_bit_width']}, compile {r['compile_s']:.1f} s, "
                    f"exec-vs-clearQ {r['execute_vs_clear_quantized_max_abs']:.1e}")
        else:
            note = f"params {r['params']}"
            if r.get("unsanitised_because"):
                note += f"; flooded it would have std {r['flood_std_score_if_sanitised']:.1e} per score"
        flooded = "yes" if r.get("sanitised") else "no"
        sp = r.get("eval_speedup_vs_dot")
        out.append(
            f"| {r['d']} | {r['k']} | {r['backend']} | {flooded} | {r['encrypt_ms']:.1f} | {r['eval_ms']:.1f} | "
            f"{r['decrypt_ms']:.1f} | {r['up_bytes'] / 1e3:.1f} | {r['down_bytes'] / 1e3:.1f} | "
            f"{r['eval_key_bytes'] / 1e6:.2f} | {_fmt(r.get('throughput_qps_1core'), '.0f')} | "
            f"{r['argmax_agreement']:.3f} ({r['queries_run']}) | {r['max_abs_err_vs_plain']:.1e} | "
            f"{r.get('max_err_over_range', float('nan')):.1e} | {_fmt(r.get('flood_bound_B'), '.1e')} | "
            f"{_fmt(r.get('flood_std_score'), '.1e')} | {sp and f'{sp:.2f}' or '-'} | {note} |")
    bat = [r for r in infer if isinstance(r.get("batched"), dict) and "batch" in r["batched"]]
    if bat:
        out += ["", "### Batched queries (B queries of one client per message, flooded)", "",
                "| d | K | backend (params) | B | eval ms / ciphertext | eval ms / query | up KB / query | "
                "down KB / query | keys MB | rotations / ciphertext | q/s 1 core | max err | agree |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in bat:
            x = r["batched"]
            out.append(f"| {r['d']} | {r['k']} | {r['backend']} ({r['params']}) | {x['batch']} | "
                       f"{x['eval_ms_per_ciphertext']:.1f} | "
                       f"{x['eval_ms_per_ciphertext'] / x['batch']:.1f} | {x['up_bytes_per_query'] / 1e3:.1f} | "
                       f"{x['down_bytes_per_query'] / 1e3:.1f} | {x['eval_key_bytes'] / 1e6:.2f} | {x['rotations']} | "
                       f"{x['throughput_qps_1core']:.0f} | {x['max_abs_err_vs_plain']:.1e} | {x['argmax_agreement']:.3f} |")
    out += ["", "## Before / after and targets (d x K = 768 x 16 and 4096 x 16, flooded replies)", "",
            "'met' is for the best of the two after columns.", "",
            "| d x K | quantity | seal-v1 (before) | seal (after, slots) | seal-coeff (after, coefficients) | target "
            "| met |", "|---|---|---|---|---|---|---|"]

    def cell(name, d, k):
        return next((r for r in infer if r["backend"] == name and r["d"] == d and r["k"] == k and "eval_ms" in r), None)

    for d, k, t_ms, t_kb in ((768, 16, 5.0, 100.0), (4096, 16, 15.0, 200.0)):
        a, b, cc = cell("seal-v1", d, k), cell("seal", d, k), cell("seal-coeff", d, k)
        if b is None and cc is None:
            continue
        qty = [("provider eval ms", lambda r: r["eval_ms"], t_ms, ".1f"),
               ("KB per query (up + down)", lambda r: (r["up_bytes"] + r["down_bytes"]) / 1e3, t_kb, ".0f")]
        if d == 768:
            qty += [("setup keys MB", lambda r: r["eval_key_bytes"] / 1e6, 1.0, ".2f"),
                    ("max err / score range", lambda r: r["max_err_over_range"], 1e-3, ".1e"),
                    ("queries/s, 1 core", lambda r: r.get("throughput_qps_1core") or 0.0, None, ".0f"),
                    ("queries/s, 1 core, batched", lambda r: (r.get("batched") or {}).get("throughput_qps_1core")
                     or 0.0, None, ".0f")]
        for label, f, target, fm in qty:
            before = format(f(a), fm) if a and not label.endswith("batched") else "-"
            afters = [f(r) for r in (b, cc) if r is not None]
            if label.startswith("queries/s"):
                met = "yes" if max(afters) >= 200 else "no"
                tgt = ">= 200"
            else:
                met = "yes" if min(afters) <= target else "no"
                tgt = f"<= {target:g}"
            slot = format(f(b), fm) if b else "-"
            coef = format(f(cc), fm) if cc else "-"
            out.append(f"| {d} x {k} | {label} | {before} | {slot} | {coef} | {tgt} | {met} |")
    for r in fit:
        if r.get("speedup_vs_slots"):
            slot = next(x for x in fit if x.get("method") == "ckks (linalign.fhe.fitting)" and x.get("n") == r["n"])
            how = "extrapolated" if slot["extrapolated_to_d_b"] else "all columns"
            out.append(f"| fit n={r['n']}, {r['d_b']} -> {r['d_a']} | whole encrypted fit, s | {_fit_total(slot):.1f} "
                       f"(slots, {how}) | - | {_fit_total(r):.1f} | >= 10x faster | "
                       f"{'yes' if r['speedup_vs_slots'] >= 10 else 'no'} ({r['speedup_vs_slots']:.1f}x) |")
    out += ["", "## Fitting (cross term, public rows)", "",
            "Total = keygen + provider setup + client encrypt + provider + client decrypt, for all d_B + 1 "
            "columns; a row marked extrapolated ran only its first columns (`--fit_columns`, "
            "`--slot_fit_columns`) and scales their cost; the coefficient fit runs every column.", "",
            "| method | n | d_B x d_A | columns run | keygen s | key MB | provider setup s | client enc s | "
            "provider s | client dec s | total s | x vs slots | up MB | down MB | rel. Frobenius err | "
            "rotations / column | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in fit:
        if "skipped" in r:
            out.append(f"| {r['method']} | {r['n']} |" + " |" * 12 + f" skipped: {r['skipped']} |")
            continue
        ex = " (extrapolated)" if r["extrapolated_to_d_b"] else ""
        note = ""
        if "layout" in r and isinstance(r["layout"], dict):
            lay = r["layout"]
            note = (f"no rotation, no Galois key; {lay['groups_J']} groups of {lay['columns_per_group']} columns, "
                    f"{lay['row_chunks_T']} row chunks x {lay['reply_polys_per_group_G']} reply polys, "
                    f"{lay['messages']} messages; B {r['flood_bound_B']:.1e}, flood std {r['flood_std_value']:.1e}")
        elif "galois_keys" in r:
            note = (f"{r['multiplies_per_column']} multiplies / column, {r['galois_keys']} Galois keys, "
                    f"B {r['flood_bound_B']:.1e}, flood std {r['flood_std_slot']:.1e} / slot")
        total = _fit_total(r)
        out.append(f"| {r['method']} | {r['n']} | {r['d_b']} x {r['d_a']} | {r['columns_run']}{ex} | "
                   f"{r['keygen_s']:.1f} | {r['key_bytes'] / 1e6:.1f} | {_fmt(r.get('provider_setup_s'), '.1f')} | "
                   f"{r['client_encrypt_s']:.1f} | "
                   f"{r['provider_s']:.1f} | {r['client_decrypt_s']:.1f} | {total:.1f} | "
                   f"{_fmt(r.get('speedup_vs_slots'), '.1f')} | {r['up_bytes'] / 1e6:.1f} | "
                   f"{r['down_bytes'] / 1e6:.1f} | {r['rel_fro_err']:.1e} | {r.get('rotations_per_column', '-')} | "
                   f"{note} |")
    return "\n".join(out) + "\n"


def _plot(infer: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in infer})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    names = list(dict.fromkeys(r["backend"] for r in infer))
    for b, name in enumerate(names):
        color = f"C{b}"  # one colour per backend, one line style per K
        for k, style in zip(ks, ["-", "--", ":", "-."]):
            pts = [(r["d"], r) for r in infer if r["backend"] == name and r["k"] == k and "eval_ms" in r]
            if not pts:
                continue
            ds = [p[0] for p in pts]
            states = {bool(p[1].get("sanitised")) for p in pts}
            flooded = "" if not name.startswith("seal") else (
                " flooded" if states == {True} else " unflooded" if states == {False} else " flooded where it can")
            kw = dict(color=color, marker="o", label=f"{name}{flooded}, K={k}")
            axes[0].plot(ds, [p[1]["eval_ms"] for p in pts], style, **kw)
            axes[1].plot(ds, [(p[1]["up_bytes"] + p[1]["down_bytes"]) / 1e3 for p in pts], style, **kw)
            axes[2].plot(ds, [max(p[1]["max_err_over_range"], 1e-16) for p in pts], style, **kw)
    titles = ["provider evaluation per query", "bytes per query (up + down)", "max |error| / score range"]
    ylabels = ["ms", "KB", "relative error"]
    for ax, title, lab in zip(axes, titles, ylabels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("d (input width)")
        ax.set_ylabel(lab)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[2].axhline(1e-3, color="k", lw=0.8, ls=":")
    axes[2].annotate("target 1e-3", (0.02, 1e-3), xycoords=("axes fraction", "data"), va="bottom", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    # One legend below the panels: it never covers a line.
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle("HELIX encrypted inference: seal-v1 (before) vs seal and seal-coeff (after), baselines; "
                 "flooded SEAL replies")
    fig.tight_layout(rect=(0, 0.12 + 0.03 * ((len(labels) - 1) // 6), 1, 0.95))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def main(argv):
    del argv
    if FLAGS.quick:
        FLAGS.dims, FLAGS.classes, FLAGS.fit_n = ["384", "768"], ["2", "5"], ["4096"]
        FLAGS.fit_columns, FLAGS.queries = 2, 6
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    if FLAGS.plot_only:
        res = json.loads((out / "results.json").read_text())
        atomic_write(out / "results.md", _markdown(res["inference"], res["fitting"], res["meta"]))
        _plot(res["inference"], out / "results.png")
        _plot_fit(res["fitting"], out / "fit.png")
        return
    import sys

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python " + " ".join(sys.argv),
            "load_avg_start": os.getloadavg(), "flood_bits": FLAGS.flood_bits}
    from linalign.machine import cpu_model

    meta["cpu"] = cpu_model()
    meta["machine"] = f"CPU {meta['cpu']} ({os.cpu_count()} cores, shared with other jobs; load average at start " \
                      f"{meta['load_avg_start'][0]:.1f}); no GPU."
    if "concrete" in FLAGS.backends:
        from linalign.fhe import concrete_backend

        concrete_backend._import_concrete()  # import cost kept out of the first cell's setup time
    t0 = time.perf_counter()

    def save_partial(infer_rows, fit_rows):
        """Writes results.json after every cell (meta.partial = True) so a cut-short run keeps them."""
        part = {**meta, "partial": True, "wall_s": time.perf_counter() - t0}
        atomic_write(out / "results.json", json.dumps({"meta": part, "inference": infer_rows, "fitting": fit_rows},
                                                indent=1, default=float))

    infer = bench_infer(lambda rows: save_partial(rows, []))
    fit = [] if FLAGS.skip_fit else bench_fit(lambda rows: save_partial(infer, rows))
    meta["partial"] = False
    meta["load_avg_end"] = os.getloadavg()
    meta["machine"] += f" Load average at end {meta['load_avg_end'][0]:.1f}."
    meta["wall_s"] = time.perf_counter() - t0
    atomic_write(out / "results.json", json.dumps({"meta": meta, "inference": infer, "fitting": fit}, indent=1,
                                            default=float))
    md = _markdown(infer, fit, meta)
    atomic_write(out / "results.md", md)
    _plot(infer, out / "results.png")
    _plot_fit(fit, out / "fit.png")
    print(md)
    print("eval speedup vs tenseal-dot (>1 = faster than the baseline):")
    for r in infer:
        if "eval_speedup_vs_dot" in r and r["backend"] != "tenseal-dot":
            print(f"  d={r['d']:5d} K={r['k']:3d} {r['backend']:12s} eval x{r['eval_speedup_vs_dot']:.2f}  "
                  f"bytes x{r['bytes_ratio_vs_dot']:.3f}")


if __name__ == "__main__":
    app.run(main)
