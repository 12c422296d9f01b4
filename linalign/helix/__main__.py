"""HELIX command line: ``python -m linalign.helix serve|fit|query [flags]``.

  # provider: head V, c (+ its embeddings of the public set) in a bundle .npz
  python -m linalign.helix serve --port=7700 --head=provider.npz --max_seconds=3600
  # client: fit the map under encryption on its embeddings of the same public set
  python -m linalign.helix fit --port=7700 --public=z_public_b.npy --lam=1e-2 --map_out=map_dir
  # client: encrypted scores for its queries (mapped locally with the fitted map first)
  python -m linalign.helix query --port=7700 --map=map_dir --embeddings=z_query_b.npy --out=scores.npy
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from linalign.atomic import atomic_file, atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 7700, "TCP port on 127.0.0.1 (serve: 0 picks a free one).")
flags.DEFINE_string("port_file", None, "serve: write the bound port here (atomically).")
flags.DEFINE_string("head", None, "serve: provider bundle .npz (v_dk, c_k, optional z_na).")
flags.DEFINE_integer("max_connections", 0, "serve: stop after this many connections (0 = no limit).")
flags.DEFINE_float("max_seconds", 0.0, "serve: stop after this many seconds (0 = no limit).")
flags.DEFINE_integer("max_requests", 100_000, "serve: frames per connection.")
flags.DEFINE_float("io_timeout", 30.0, "serve: seconds to wait for each frame.")
flags.DEFINE_integer("max_message_mb", 256, "Largest accepted frame, in MiB.")
flags.DEFINE_string("public", None, "fit: client embeddings of the public set, .npy [n, d_b].")
flags.DEFINE_float("lam", 1e-2, "fit: ridge strength (on the scale of C_bb, a sum over rows).")
flags.DEFINE_string("map_out", None, "fit: directory for the fitted AffineMap.")
flags.DEFINE_string("map", None, "query: fitted AffineMap directory.")
flags.DEFINE_string("embeddings", None, "query: client embeddings .npy [n, d_b].")
flags.DEFINE_string("out", None, "query: where to write the decrypted scores .npy [n, K].")
flags.DEFINE_string("backend", "seal", "query: FHE backend (seal, tenseal, tenseal-dot).")
flags.DEFINE_string("params", "n8192", "CKKS preset (see linalign.fhe.params).")

COMMANDS = ("serve", "fit", "query")


def _load_npy(path: str, what: str) -> np.ndarray:
    if not path:
        raise app.UsageError(f"--{what} is required")
    if not pathlib.Path(path).is_file():
        raise app.UsageError(f"--{what}={path} does not exist")
    return np.load(path, allow_pickle=False)


def serve() -> None:
    from linalign.helix.server import Server, ServerConfig, load_bundle

    if not FLAGS.head:
        raise app.UsageError("--head is required for serve")
    cfg = ServerConfig(port=FLAGS.port, max_connections=FLAGS.max_connections, max_seconds=FLAGS.max_seconds,
                       max_requests=FLAGS.max_requests, io_timeout_s=FLAGS.io_timeout,
                       max_message_bytes=FLAGS.max_message_mb << 20)
    server = Server(load_bundle(FLAGS.head), cfg)
    if FLAGS.port_file:
        atomic_write(FLAGS.port_file, str(server.port))
    server.serve_forever()


def fit() -> None:
    from linalign.helix.client import HelixClient

    if not FLAGS.map_out:
        raise app.UsageError("--map_out is required for fit")
    z = _load_npy(FLAGS.public, "public")
    with HelixClient(FLAGS.port, max_message_bytes=FLAGS.max_message_mb << 20) as cl:
        affine = cl.fit(z, FLAGS.lam, FLAGS.params)
        stats = cl.stats
    affine.save(FLAGS.map_out, overwrite=True)
    print(json.dumps({"map": FLAGS.map_out, "fit_seconds": stats.fit_seconds, "setup_up_bytes": stats.setup_up,
                      "fit_up_bytes": stats.fit_up, "fit_down_bytes": stats.fit_down}))


def query() -> None:
    from linalign.align.affine_map import AffineMap
    from linalign.helix.client import HelixClient

    if not (FLAGS.map and FLAGS.out):
        raise app.UsageError("--map and --out are required for query")
    z = _load_npy(FLAGS.embeddings, "embeddings")
    affine = AffineMap.load(FLAGS.map)
    z_hat = np.asarray(affine.apply(z), dtype=np.float64)
    with HelixClient(FLAGS.port, max_message_bytes=FLAGS.max_message_mb << 20) as cl:
        info = cl.info()
        cl.setup_inference(int(info["d"]), int(info["k"]), FLAGS.backend, FLAGS.params)
        scores = cl.query(z_hat)
        stats = cl.stats
    with atomic_file(FLAGS.out, suffix=".npy") as tmp:
        np.save(tmp, scores)
    n = max(stats.queries, 1)
    print(json.dumps({"queries": stats.queries, "ms_per_query": 1e3 * stats.query_seconds / n,
                      "setup_bytes": stats.setup_up + stats.setup_down,
                      "bytes_per_query": (stats.query_up + stats.query_down) / n}))


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m linalign.helix {{{'|'.join(COMMANDS)}}} [flags]")
    {"serve": serve, "fit": fit, "query": query}[argv[1]]()


if __name__ == "__main__":
    app.run(main)
