"""HELIX under load over TLS, and what circuit privacy costs per reply.

  python experiments/bench_helix_load.py --clients=32 --queries=20 --d=768 --k=16 \
      --slow_clients=8 --workers=2 --out=docs/results/helix_load

1. Flooding cost (one process, no network): provider time per reply and score error for the
   unsanitised reply and for sanitised replies at several lambda_s (median of --reps).
2. Load: a provider process (``python -m linalign.helix serve``, TLS with a throw-away CA,
   shared-secret authentication, --workers) and --clients concurrent client threads, each
   generating its keys, authenticating and sending --queries encrypted queries at d x K.
   Reports per-query latency p50/p99 (client side: encrypt, round trip, decrypt), queries/s
   over the query phase, setup time, errors. Run again with --slow_clients attached: half idle
   sockets that never send, a quarter trickling one byte per second, a quarter sending INFO
   in a loop.
Writes results.json and results.md under --out, with the command and the CPU model.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags, logging

from linalign.atomic import atomic_write, atomic_write_json
from linalign.machine import cpu_model

FLAGS = flags.FLAGS
flags.DEFINE_string("backend", "seal-coeff", "Inference backend served and queried (seal-coeff or seal).")
flags.DEFINE_integer("clients", 32, "Concurrent clients.")
flags.DEFINE_integer("queries", 20, "Queries per client.")
flags.DEFINE_integer("d", 768, "Query dimension.")
flags.DEFINE_integer("k", 16, "Scores.")
flags.DEFINE_integer("slow_clients", 8, "Idle/slow clients attached in the second run.")
flags.DEFINE_integer("workers", 2, "Server worker threads.")
flags.DEFINE_integer("reps", 20, "Repetitions for the flooding-cost table.")
flags.DEFINE_list("flood_bits", ["8", "12", "16", "20"], "lambda_s values for the flooding-cost table.")
flags.DEFINE_string("out", "results/helix_load", "Output directory.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def flood_cost(v, c) -> list:
    from linalign.fhe import base
    from linalign.fhe.privacy import FloodPolicy

    rng = np.random.default_rng(1)
    x = rng.standard_normal(FLAGS.d)
    x /= np.linalg.norm(x)
    configs = []
    for bits in [None] + [int(b) for b in FLAGS.flood_bits]:
        client = base.make_client(FLAGS.backend, FLAGS.d, FLAGS.k)
        provider = base.make_provider(client.public_context())
        std = 0.0
        if bits is not None:
            policy = FloodPolicy(bits)
            # per score: the client averages the reply's replicas of each score
            std = provider.enable_privacy(provider.calibrate(v, c, 1.0, policy), policy)
            std /= np.sqrt(getattr(provider, "replicas", 1))
        configs.append((bits, client, provider, provider.prepare(v, c), client.encrypt(x), std))
    times = {b[0]: [] for b in configs}
    errs = {b[0]: [] for b in configs}
    sizes = {}
    # Interleaved: every repetition times every configuration once, so load from other jobs on
    # the shared cores falls on all of them alike; ratios are per repetition.
    for _ in range(FLAGS.reps):
        for bits, client, provider, head, q, _ in configs:
            t0 = time.perf_counter()
            r = provider.apply(q, head)
            times[bits].append(time.perf_counter() - t0)
            errs[bits].append(client.decrypt(r) - (x @ v + c))
            sizes[bits] = len(r)
    base_t = np.asarray(times[None])
    rows = []
    for bits, *_, std in configs:
        e = np.asarray(errs[bits])
        rows.append({"flood_bits": bits, "sanitised": bits is not None,
                     "statistical_distance_bound": None if bits is None else 2.0 ** -(bits + 1),
                     "apply_ms_median": 1e3 * float(np.median(times[bits])),
                     "ratio_to_unsanitised_median": float(np.median(np.asarray(times[bits]) / base_t)),
                     "announced_score_std": std, "measured_score_err_std": float(e.std()),
                     "max_abs_err": float(np.abs(e).max()), "reply_bytes": sizes[bits]})
        logging.info("flood %s: %.1f ms, err std %.3g", bits, rows[-1]["apply_ms_median"], e.std())
    return rows


def start_server(tmp: pathlib.Path, bundle: pathlib.Path, tls, secrets_path):
    port_file = tmp / f"port{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "linalign.helix", "serve", "--port=0", f"--port_file={port_file}",
         f"--head={bundle}", f"--workers={FLAGS.workers}", "--max_per_peer=128", "--max_open=128",
         f"--tls_cert={tls.cert}", f"--tls_key={tls.key}", f"--secrets={secrets_path}", "--idle_timeout=60",
         "--frame_timeout=60", "--max_seconds=3600", f"--request_log={tmp / 'requests.jsonl'}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def run_load(port: int, ca: str, secret: bytes, slow: int) -> dict:
    from linalign.helix import messages as M
    from linalign.helix.client import HelixClient

    rng = np.random.default_rng(2)
    queries = rng.standard_normal((FLAGS.clients, FLAGS.queries, FLAGS.d))
    queries /= np.linalg.norm(queries, axis=2, keepdims=True)
    lat, setup, errors = [], [], []
    spans = []
    lock = threading.Lock()
    stop = threading.Event()
    start = threading.Barrier(FLAGS.clients)

    def client(i):
        try:
            start.wait()
            t0 = time.perf_counter()
            with HelixClient(port, tls_ca=ca, client_id="bench", secret=secret) as cl:
                cl.setup_inference(FLAGS.d, FLAGS.k, FLAGS.backend)
                t1 = time.perf_counter()
                mine = []
                for q in queries[i]:
                    a = time.perf_counter()
                    cl.query(q[None])
                    mine.append(time.perf_counter() - a)
                t2 = time.perf_counter()
            with lock:
                setup.append(t1 - t0)
                lat.extend(mine)
                spans.append((t1, t2))
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    def idle():
        import ssl

        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
            stop.wait()

    def trickle():
        frame = M.encode(M.MsgType.HELLO, {"client_id": "slow", "nonce": "00" * 32})
        while not stop.is_set():
            try:
                import ssl

                ctx = ssl.create_default_context(cafile=ca)
                with socket.create_connection(("127.0.0.1", port)) as raw, \
                        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    for b in frame:
                        if stop.wait(1.0):
                            return
                        s.sendall(bytes([b]))
            except OSError:
                time.sleep(0.5)

    def chatty():
        with HelixClient(port, tls_ca=ca, client_id="bench", secret=secret) as cl:
            while not stop.is_set():
                cl.info()

    background = []
    kinds = [idle] * (slow // 2) + [trickle] * (slow // 4) + [chatty] * (slow - slow // 2 - slow // 4)
    for f in kinds:
        th = threading.Thread(target=f, daemon=True)
        th.start()
        background.append(th)
    time.sleep(1.0 if slow else 0)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(FLAGS.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    for th in background:
        th.join(timeout=10)
    lat_ms = 1e3 * np.asarray(lat) if lat else np.zeros(1)
    t_first = min(s for s, _ in spans) if spans else 0.0
    t_last = max(e for _, e in spans) if spans else 1.0
    return {"slow_clients": slow, "slow_kinds": [f.__name__ for f in kinds], "clients": FLAGS.clients,
            "queries": len(lat), "errors": len(errors), "error_samples": errors[:5],
            "latency_ms_p50": float(np.percentile(lat_ms, 50)), "latency_ms_p99": float(np.percentile(lat_ms, 99)),
            "latency_ms_max": float(lat_ms.max()),
            "queries_per_s": len(lat) / max(t_last - t_first, 1e-9),
            "setup_s_p50": float(np.median(setup)) if setup else None,
            "setup_s_max": float(max(setup)) if setup else None}


def main(argv):
    del argv
    from linalign.helix.certs import make_ca, make_cert
    from linalign.helix.server import Bundle, save_bundle

    out = pathlib.Path(FLAGS.out)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((FLAGS.d, FLAGS.k)) / np.sqrt(FLAGS.d)
    c = rng.standard_normal(FLAGS.k)
    res = {"command": "python experiments/bench_helix_load.py " + " ".join(sys.argv[1:]), "cpu_model": cpu_model(),
           "cpus": os.cpu_count(), "load_average_start": os.getloadavg(), "d": FLAGS.d, "k": FLAGS.k,
           "backend": FLAGS.backend, "server_flood_bits": 12}
    res["flood_cost"] = flood_cost(v, c)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = pathlib.Path(tmpd)
        ca = make_ca(tmp / "tls")
        tls = make_cert(tmp / "tls", "server", ca, "localhost", server=True)
        secret = os.urandom(32)
        atomic_write_json(tmp / "secrets.json", {"bench": secret.hex()})
        bundle = save_bundle(tmp / "head.npz", Bundle(v, c, None, {"input_norm": 1.5}))  # queries have norm 1
        res["runs"] = []
        # Alternating order, twice: the shared machine's load drifts during a run.
        for slow in (0, FLAGS.slow_clients, 0, FLAGS.slow_clients):
            proc, port = start_server(tmp, bundle, tls, tmp / "secrets.json")
            try:
                r = run_load(port, str(ca.cert), secret, slow)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            logging.info("load run: %s", r)
            res["runs"].append(r)
    res["load_average_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", res)
    md = [f"# HELIX load over TLS: {FLAGS.clients} clients x {FLAGS.queries} queries, d={FLAGS.d}, K={FLAGS.k}", "",
          f"Command: `{res['command']}`  ", f"CPU: {res['cpu_model']} ({res['cpus']} cores, shared; load average "
          f"{res['load_average_start'][0]:.1f} at start)  ",
          f"Backend: {FLAGS.backend}. Server: {FLAGS.workers} workers, TLS + HMAC authentication, every reply "
          "sanitised (lambda_s = 12).", "",
          "| slow clients attached | queries | errors | p50 ms | p99 ms | max ms | queries/s | setup p50 s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        md.append(f"| {r['slow_clients']} ({', '.join(sorted(set(r['slow_kinds']))) or '-'}) | {r['queries']} | "
                  f"{r['errors']} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p99']:.0f} | {r['latency_ms_max']:.0f} | "
                  f"{r['queries_per_s']:.1f} | {r['setup_s_p50']:.1f} |")
    md += ["", "## Cost of circuit privacy per reply (provider side, one process)", "",
           "| lambda_s | SD bound | apply ms (median) | time / unsanitised (median of paired reps) | score error std (announced / measured) | max abs err | reply bytes |",
           "|---|---|---|---|---|---|---|"]
    for r in res["flood_cost"]:
        lam = "unsanitised" if r["flood_bits"] is None else str(r["flood_bits"])
        sd = "-" if r["statistical_distance_bound"] is None else f"2^-{r['flood_bits'] + 1}"
        md.append(f"| {lam} | {sd} | {r['apply_ms_median']:.1f} | {r['ratio_to_unsanitised_median']:.2f} | "
                  f"{r['announced_score_std']:.2g} / "
                  f"{r['measured_score_err_std']:.2g} | {r['max_abs_err']:.2g} | {r['reply_bytes']} |")
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    app.run(main)
