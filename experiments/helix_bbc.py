"""HELIX end to end on real models and BBC News, encrypted vs plaintext, side by side.

  python experiments/helix_bbc.py --n_public=2048 --max_train=600 --out=docs/results/helix_bbc

Provider (A): all-mpnet-base-v2 embeddings + a logistic-regression head on BBC training articles.
Client (B): all-MiniLM-L6-v2. Public set: sentences of the training articles (no labels).
1. plaintext reference: map fit in the clear, head applied to mapped client embeddings;
2. HELIX: a real provider process on 127.0.0.1 over TLS (throw-away CA and certificate) with
   shared-secret authentication; the client fits its map under encryption (``fit``: the
   provider folds, re-randomises and floods every reply) and classifies the held-out
   articles with encrypted queries (``query``, flooded replies as well).
Prints both accuracies, their difference, time and bytes; writes JSON and Markdown.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

from linalign.atomic import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_string("provider_model", "all-mpnet-base-v2", "Model A (asset name or path).")
flags.DEFINE_string("client_model", "all-minilm-l6-v2", "Model B (asset name or path).")
flags.DEFINE_integer("n_public", 4096, "Public sentences for the map.")
flags.DEFINE_float("lam", 1.0, "Ridge strength (scale of C_bb, a sum over rows).")
flags.DEFINE_float("test_fraction", 0.2, "Held-out articles.")
flags.DEFINE_integer("max_test", 0, "Classify only this many held-out articles (0 = all).")
flags.DEFINE_integer("max_train", 0, "Train the provider's head on this many training articles, "
                     "sampled at random (0 = all).")
flags.DEFINE_integer("max_length", 128, "Tokens per text.")
flags.DEFINE_string("backend", "seal-coeff", "Inference backend (seal-coeff or seal).")
flags.DEFINE_enum("fit_backend", "seal-coeff-fit", ["seal-coeff-fit", "seal-fit"], "Encrypted fit backend.")
flags.DEFINE_integer("seed", 0, "Split and sampling seed.")
flags.DEFINE_integer("flood_bits", 12, "Provider's flooding lambda_s (statistical distance 2^-(lambda_s+1)).")
flags.DEFINE_string("out", "results/helix_bbc", "Output directory.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _embed(model_name, texts):
    from linalign.checkpoints import load
    from linalign.eval.cache import hidden_states

    model = load(model_name)
    return np.asarray(hidden_states(model, texts, max_length=FLAGS.max_length), np.float64)


def main(argv):
    del argv
    from linalign.align.solve import solve
    from linalign.align.stats import from_arrays
    from linalign.data import load_corpus
    from linalign.data.corpora import split_sentences
    from linalign.data.splits import sample, train_test_split
    from linalign.fhe.head import fit_logreg_head
    from linalign.helix.client import HelixClient
    from linalign.helix.server import Bundle, save_bundle

    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus("bbc_news")
    train, test = train_test_split(corpus, FLAGS.test_fraction, FLAGS.seed)
    names = list(corpus.label_names)
    sentences = sorted({s for t in train.texts for s in split_sentences(t) if len(s.split()) >= 3})
    if FLAGS.max_train and FLAGS.max_train < len(train.texts):
        train = sample(train, FLAGS.max_train, seed=FLAGS.seed)  # the split is in label order
    if FLAGS.max_test and FLAGS.max_test < len(test.texts):
        test = sample(test, FLAGS.max_test, seed=FLAGS.seed + 1)
    y_train = np.array([names.index(l) for l in train.labels])
    y_test = np.array([names.index(l) for l in test.labels])
    test_texts = test.texts
    rng = np.random.default_rng(FLAGS.seed)
    public = [sentences[i] for i in sorted(rng.choice(len(sentences), FLAGS.n_public, replace=False))]
    logging.info("train %d, test %d, public %d of %d sentences", len(train.texts), len(test_texts),
                 len(public), len(sentences))

    z_a_train = _embed(FLAGS.provider_model, train.texts)
    z_a_pub = _embed(FLAGS.provider_model, public)
    z_a_test = _embed(FLAGS.provider_model, test_texts)
    z_b_pub = _embed(FLAGS.client_model, public)
    z_b_test = _embed(FLAGS.client_model, test_texts)

    v, c = fit_logreg_head(z_a_train, y_train)
    acc_native = float(np.mean(np.argmax(z_a_test @ v + c, 1) == y_test))
    w, b = (np.asarray(x, np.float64) for x in solve(from_arrays(z_b_pub, z_a_pub), FLAGS.lam))
    acc_plain = float(np.mean(np.argmax((z_b_test @ w + b) @ v + c, 1) == y_test))
    logging.info("native %.4f, plaintext aligned %.4f", acc_native, acc_plain)

    from linalign.atomic import atomic_write_json
    from linalign.helix.certs import make_ca, make_cert

    with tempfile.TemporaryDirectory() as tmp:
        ca = make_ca(pathlib.Path(tmp) / "tls")
        server_cert = make_cert(pathlib.Path(tmp) / "tls", "server", ca, "localhost", server=True)
        secret = os.urandom(32)
        atomic_write_json(pathlib.Path(tmp) / "secrets.json", {"bbc-client": secret.hex()})
        bundle = save_bundle(pathlib.Path(tmp) / "provider.npz",
                             Bundle(v, c, z_a_pub, {"public_fingerprint": f"bbc-train-sentences-{FLAGS.seed}",
                                                    "label_names": names}))
        port_file = pathlib.Path(tmp) / "port"
        proc = subprocess.Popen([sys.executable, "-m", "linalign.helix", "serve", "--port=0",
                                 f"--port_file={port_file}", f"--head={bundle}", "--max_connections=1",
                                 "--max_seconds=7200", "--idle_timeout=600", "--frame_timeout=600",
                                 f"--tls_cert={server_cert.cert}", f"--tls_key={server_cert.key}",
                                 f"--secrets={pathlib.Path(tmp) / 'secrets.json'}",
                                 f"--flood_bits={FLAGS.flood_bits}"],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        while not port_file.exists():
            if proc.poll() is not None:
                raise RuntimeError("provider exited before listening")
            time.sleep(0.1)
        with HelixClient(int(port_file.read_text()), "127.0.0.1", tls_ca=str(ca.cert), client_id="bbc-client",
                         secret=secret) as cl:
            affine = cl.fit(z_b_pub, FLAGS.lam, backend=FLAGS.fit_backend)
            z_hat = np.asarray(affine.apply(z_b_test), np.float64)
            cl.setup_inference(v.shape[0], v.shape[1], FLAGS.backend)
            scores = cl.query(z_hat)
            st = cl.stats
            announced = cl.announced
            replicas = getattr(cl._backend.layout, "replicas", 1)
        proc.wait(timeout=60)
    acc_he = float(np.mean(np.argmax(scores, 1) == y_test))
    plain_scores = (z_b_test @ w + b) @ v + c
    res = {
        "provider_model": FLAGS.provider_model, "client_model": FLAGS.client_model,
        "n_public": len(public), "n_train_head": len(train.texts), "n_test": len(test_texts), "lam": FLAGS.lam, "backend": FLAGS.backend,
        "fit_backend": FLAGS.fit_backend,
        "acc_native_provider": acc_native, "acc_plaintext_aligned": acc_plain, "acc_helix": acc_he,
        "acc_diff_points": 100 * (acc_he - acc_plain),
        "prediction_agreement": float(np.mean(np.argmax(scores, 1) == np.argmax(plain_scores, 1))),
        "max_abs_score_diff": float(np.abs(scores - plain_scores).max()),
        "map_max_abs_w_diff": float(np.abs(np.asarray(affine.w, np.float64) - w).max()),
        "head_max_abs_v": float(np.abs(v).max()),
        "transport": "TLS + HMAC shared-secret auth", "flood_bits": FLAGS.flood_bits,
        "score_flood_std_per_slot": announced["flood_std"] / announced["head_scale"],
        # the client averages the replicas of each score in the reply
        "score_flood_std": announced["flood_std"] / announced["head_scale"] / np.sqrt(replicas),
        "reply_replicas": replicas,
        "fit_seconds": st.fit_seconds, "fit_up_bytes": st.fit_up, "fit_down_bytes": st.fit_down,
        "setup_bytes": st.setup_up + st.setup_down,
        "queries": st.queries,
        "ms_per_query": 1e3 * st.query_seconds / max(st.queries, 1),
        "bytes_per_query": (st.query_up + st.query_down) / max(st.queries, 1),
    }
    from linalign.machine import cpu_model

    res["cpu"] = cpu_model()
    res["load_average_1m_at_end"] = os.getloadavg()[0]
    res["command"] = "python experiments/helix_bbc.py " + " ".join(sys.argv[1:])
    text = json.dumps(res, indent=1)
    print(text)
    atomic_write(out / "helix_bbc.json", text)
    md = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in res.items()]
    atomic_write(out / "helix_bbc.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    app.run(main)
