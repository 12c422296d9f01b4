"""HELIX command line: ``python -m linalign.helix serve|fit|query [flags]``.

  # provider: head V, c (+ its embeddings of the public set) in a bundle .npz; TLS, secrets
  python -m linalign.helix serve --host=0.0.0.0 --port=7700 --head=provider.npz \
      --tls_cert=server.pem --tls_key=server.key --secrets=clients.json --workers=4 \
      --request_log=requests.jsonl --query_budget=10000
  # client: fit the map under encryption on its embeddings of the same public set
  python -m linalign.helix fit --host=provider.example --port=7700 --tls_ca=ca.pem \
      --client_id=org-b --secret_file=org-b.key --public=z_public_b.npy --lam=1e-2 --map_out=map_b
  # client: encrypted scores for its queries (mapped locally with the fitted map first)
  python -m linalign.helix query --host=provider.example --port=7700 --tls_ca=ca.pem \
      --client_id=org-b --secret_file=org-b.key --map=map_b --embeddings=z_query_b.npy --out=scores.npy

Without TLS and authentication the server and the client only use loopback addresses.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from linalign.atomic import atomic_file, atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_string("host", "127.0.0.1", "serve: address to bind; fit/query: provider address.")
flags.DEFINE_integer("port", 7700, "TCP port (serve: 0 picks a free one).")
flags.DEFINE_string("port_file", None, "serve: write the bound port here (atomically).")
flags.DEFINE_string("head", None, "serve: provider bundle .npz (v_dk, c_k, optional z_na).")
flags.DEFINE_integer("workers", 2, "serve: encrypted-work threads shared by all connections.")
flags.DEFINE_integer("max_open", 64, "serve: open connections in total.")
flags.DEFINE_integer("max_per_peer", 16, "serve: open connections per peer address.")
flags.DEFINE_integer("max_connections", 0, "serve: stop after this many connections (0 = no limit).")
flags.DEFINE_float("max_seconds", 0.0, "serve: stop after this many seconds (0 = no limit).")
flags.DEFINE_integer("max_requests", 100_000, "serve: frames per connection.")
flags.DEFINE_float("idle_timeout", 30.0, "serve: seconds a connection may wait before its next frame.")
flags.DEFINE_float("frame_timeout", 30.0, "serve: seconds for a started frame (or TLS handshake) to finish.")
flags.DEFINE_float("max_connection_s", 3600.0, "serve: wall-clock seconds per connection.")
flags.DEFINE_integer("max_message_mb", 256, "Largest accepted key-material frame, in MiB.")
flags.DEFINE_string("tls_cert", None, "serve: server certificate chain (PEM); turns TLS on.")
flags.DEFINE_string("tls_key", None, "serve: server private key (PEM).")
flags.DEFINE_string("tls_client_ca", None, "serve: require client certificates signed by this CA.")
flags.DEFINE_string("secrets", None, "serve: JSON {client_id: hex secret} for challenge-response auth.")
flags.DEFINE_integer("query_budget", 100_000, "serve: queries per client identity (d + 1 recover the head).")
flags.DEFINE_integer("fit_budget", 4, "serve: fits per client identity.")
flags.DEFINE_string("request_log", None, "serve: append one JSON line per request here.")
flags.DEFINE_integer("flood_bits", 12, "serve: lambda_s; each reply is within 2^-(lambda_s+1) of head-independent.")
flags.DEFINE_float("input_norm", 0.0, "serve: largest query norm served (0: 2 x largest public-set row norm).")
flags.DEFINE_string("tls_ca", None, "fit/query: CA that signed the provider's certificate; turns TLS on.")
flags.DEFINE_string("tls_client_cert", None, "fit/query: client certificate for mutual TLS.")
flags.DEFINE_string("tls_client_key", None, "fit/query: client key for mutual TLS.")
flags.DEFINE_string("client_id", "client", "fit/query: identity for shared-secret authentication.")
flags.DEFINE_string("secret_file", None, "fit/query: file holding this client's hex secret.")
flags.DEFINE_string("public", None, "fit: client embeddings of the public set, .npy [n, d_b].")
flags.DEFINE_float("lam", 1e-2, "fit: ridge strength (on the scale of C_bb, a sum over rows).")
flags.DEFINE_string("map_out", None, "fit: where to save the fitted AffineMap (a new path).")
flags.DEFINE_bool("overwrite", False, "fit: replace --map_out if it is an existing map file.")
flags.DEFINE_string("map", None, "query: fitted AffineMap.")
flags.DEFINE_string("embeddings", None, "query: client embeddings .npy [n, d_b].")
flags.DEFINE_string("out", None, "query: where to write the decrypted scores .npy [n, K].")
flags.DEFINE_string("backend", "seal", "query: FHE backend (the server serves seal).")
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
    cfg = ServerConfig(
        host=FLAGS.host, port=FLAGS.port, workers=FLAGS.workers, max_open=FLAGS.max_open,
        max_per_peer=FLAGS.max_per_peer, idle_timeout_s=FLAGS.idle_timeout, frame_timeout_s=FLAGS.frame_timeout,
        max_connection_s=FLAGS.max_connection_s, max_requests=FLAGS.max_requests,
        max_message_bytes=FLAGS.max_message_mb << 20, max_connections=FLAGS.max_connections,
        max_seconds=FLAGS.max_seconds, tls_cert=FLAGS.tls_cert, tls_key=FLAGS.tls_key,
        tls_client_ca=FLAGS.tls_client_ca, secrets_file=FLAGS.secrets, query_budget=FLAGS.query_budget,
        fit_budget=FLAGS.fit_budget, request_log=FLAGS.request_log, flood_bits=FLAGS.flood_bits,
        input_norm=FLAGS.input_norm)
    server = Server(load_bundle(FLAGS.head), cfg)
    if FLAGS.port_file:
        atomic_write(FLAGS.port_file, str(server.port))
    server.serve_forever()


def _client():
    from linalign.helix.client import HelixClient
    from linalign.helix.security import load_secret

    secret = load_secret(FLAGS.secret_file) if FLAGS.secret_file else None
    return HelixClient(FLAGS.port, FLAGS.host, max_message_bytes=FLAGS.max_message_mb << 20, tls_ca=FLAGS.tls_ca,
                       tls_cert=FLAGS.tls_client_cert, tls_key=FLAGS.tls_client_key, client_id=FLAGS.client_id,
                       secret=secret)


def check_map_out(path: str, overwrite: bool) -> None:
    """Refuses a --map_out whose replacement could destroy something that is not a map.

    A map is one file; an existing directory is never replaced (it may be anything), and an
    existing file is replaced only with --overwrite and only if it loads as a map.
    """
    from linalign.align.affine_map import AffineMap

    p = pathlib.Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_dir():
        raise app.UsageError(f"--map_out={path} is an existing directory; a map is written as a new path "
                             "and an existing directory is never replaced")
    if not overwrite:
        raise app.UsageError(f"--map_out={path} exists; pass --overwrite to replace a map file")
    try:
        AffineMap.load(p)
    except Exception as e:  # noqa: BLE001 - any failure means: not a map we may replace
        raise app.UsageError(f"--map_out={path} exists and is not a map ({type(e).__name__}: {e}); "
                             "refusing to replace it") from None


def fit() -> None:
    if not FLAGS.map_out:
        raise app.UsageError("--map_out is required for fit")
    check_map_out(FLAGS.map_out, FLAGS.overwrite)
    z = _load_npy(FLAGS.public, "public")
    with _client() as cl:
        affine = cl.fit(z, FLAGS.lam, FLAGS.params)
        stats = cl.stats
    check_map_out(FLAGS.map_out, FLAGS.overwrite)  # again: the fit took minutes
    affine.save(FLAGS.map_out, overwrite=FLAGS.overwrite)
    print(json.dumps({"map": FLAGS.map_out, "fit_seconds": stats.fit_seconds, "setup_up_bytes": stats.setup_up,
                      "fit_up_bytes": stats.fit_up, "fit_down_bytes": stats.fit_down}))


def query() -> None:
    from linalign.align.affine_map import AffineMap

    if not (FLAGS.map and FLAGS.out):
        raise app.UsageError("--map and --out are required for query")
    z = _load_npy(FLAGS.embeddings, "embeddings")
    affine = AffineMap.load(FLAGS.map)
    z_hat = np.asarray(affine.apply(z), dtype=np.float64)
    with _client() as cl:
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
