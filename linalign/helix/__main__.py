r"""HELIX command line: `linalign helix {serve|fit|query}` (also `python -m linalign.helix`).

Without TLS and authentication the server and the client only use loopback addresses.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from linalign.atomic import atomic_file, atomic_write

FLAGS = flags.FLAGS

SERVE_USAGE = r"""Serves the provider's head V, c (and its embeddings of the public set) to HELIX clients.

  linalign helix serve --host=0.0.0.0 --port=7700 --head=provider.npz \
      --tls_cert=server.pem --tls_key=server.key --secrets=clients.json --workers=4 \
      --request_log=requests.jsonl --query_budget=10000

--head is a bundle .npz (v_dk, c_k, optional z_na). Without TLS and authentication the server
only binds loopback addresses.
"""

FIT_USAGE = r"""Fits the map under encryption on the client's embeddings of the provider's public set.

  linalign helix fit --host=provider.example --port=7700 --tls_ca=ca.pem \
      --client_id=org-b --secret_file=org-b.key --public=z_public_b.npy --lam=1e-2 \
      --out_dir=map_b

Writes OUT_DIR/map.safetensors (linalign.AffineMap.load reads OUT_DIR or the file).
"""

QUERY_USAGE = r"""Encrypted scores for the client's queries (mapped locally with the fitted map first).

  linalign helix query --host=provider.example --port=7700 --tls_ca=ca.pem \
      --client_id=org-b --secret_file=org-b.key --map=map_b --embeddings=z_query_b.npy \
      --out_dir=scores_b

Writes OUT_DIR/scores.npy [n, K] (the decrypted scores x V + c).
"""


def _define_common() -> None:
    flags.DEFINE_string("host", "127.0.0.1", "serve: address to bind; fit/query: provider address.")
    flags.DEFINE_integer("port", 7700, "TCP port (serve: 0 picks a free one).")
    flags.DEFINE_integer("max_message_mb", 256, "Largest accepted key-material frame, in MiB.")


def _define_client() -> None:
    _define_common()
    flags.DEFINE_string("tls_ca", None, "CA that signed the provider's certificate; turns TLS on.")
    flags.DEFINE_string("tls_client_cert", None, "Client certificate for mutual TLS.")
    flags.DEFINE_string("tls_client_key", None, "Client key for mutual TLS.")
    flags.DEFINE_string("client_id", "client", "Identity for shared-secret authentication.")
    flags.DEFINE_string("secret_file", None, "File holding this client's hex secret.")
    flags.DEFINE_string("params", "n8192", "CKKS preset (see linalign.fhe.params).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output (only if it is what this "
                      "command writes).")


def define_serve_flags() -> None:
    _define_common()
    flags.DEFINE_string("port_file", None, "Write the bound port here (atomically).")
    flags.DEFINE_string("head", None, "Provider bundle .npz (v_dk, c_k, optional z_na).")
    flags.DEFINE_integer("workers", 2, "Encrypted-work threads shared by all connections.")
    flags.DEFINE_integer("max_open", 64, "Open connections in total.")
    flags.DEFINE_integer("max_per_peer", 16, "Open connections per peer address.")
    flags.DEFINE_integer("max_connections", 0, "Stop after this many connections (0 = no limit).")
    flags.DEFINE_float("max_seconds", 0.0, "Stop after this many seconds (0 = no limit).")
    flags.DEFINE_integer("max_requests", 100_000, "Frames per connection.")
    flags.DEFINE_float("idle_timeout", 30.0, "Seconds a connection may wait before its next frame.")
    flags.DEFINE_float("frame_timeout", 30.0, "Seconds for a started frame (or TLS handshake) to finish.")
    flags.DEFINE_float("max_connection_s", 3600.0, "Wall-clock seconds per connection.")
    flags.DEFINE_string("tls_cert", None, "Server certificate chain (PEM); turns TLS on.")
    flags.DEFINE_string("tls_key", None, "Server private key (PEM).")
    flags.DEFINE_string("tls_client_ca", None, "Require client certificates signed by this CA.")
    flags.DEFINE_string("secrets", None, "JSON {client_id: hex secret} for challenge-response auth.")
    flags.DEFINE_integer("query_budget", 100_000, "Queries per client identity (d + 1 recover the head).")
    flags.DEFINE_integer("fit_budget", 4, "Fits per client identity.")
    flags.DEFINE_string("request_log", None, "Append one JSON line per request here.")
    flags.DEFINE_integer("flood_bits", 12, "lambda_s; each reply is within 2^-(lambda_s+1) of head-independent.")
    flags.DEFINE_float("input_norm", 0.0, "Largest query norm served (0: 2 x largest public-set row norm).")


def define_fit_flags() -> None:
    from linalign import flags as shared

    _define_client()
    flags.DEFINE_string("public", None, "Client embeddings of the public set, .npy [n, d_b].")
    shared.define_lam("1e-2", "the encrypted fit takes a fixed number (no cross-validation "
                      "over the provider's data).")
    shared.define_out_dir("Directory for map.safetensors (created; refused if it holds other files).")
    flags.DEFINE_enum("fit_backend", "seal-coeff-fit", ["seal-coeff-fit", "seal-fit"],
                      "Encrypted fit: coefficient encoding (default, ~10x faster) or the slot-packed one.")
    # Old spelling: the map file itself.
    flags.DEFINE_string("map_out", None, "Deprecated: the map file; use --out_dir.")
    shared.HIDDEN.add("map_out")


def define_query_flags() -> None:
    from linalign import flags as shared

    _define_client()
    flags.DEFINE_string("map", None, "Fitted AffineMap: map.safetensors or the directory holding it.")
    flags.DEFINE_string("embeddings", None, "Client embeddings .npy [n, d_b].")
    shared.define_out_dir("Directory for scores.npy [n, K], the decrypted scores.")
    flags.DEFINE_string("out", None, "Deprecated: the scores .npy file; use --out_dir.")
    shared.HIDDEN.add("out")
    flags.DEFINE_string("backend", "seal-coeff", "FHE backend: seal-coeff (coefficient encoding, N=4096) or seal "
                        "(slot encoding; --params picks its preset).")
    flags.DEFINE_integer("queries_per_message", 1, "Queries that share one encrypted message (seal-coeff: up "
                         "to N / d; seal: up to S / d', a power of two).")


def _load_npy(path: str, what: str) -> np.ndarray:
    if not path:
        raise app.UsageError(f"--{what} is required")
    if not pathlib.Path(path).is_file():
        raise app.UsageError(f"--{what}={path} does not exist")
    return np.load(path, allow_pickle=False)


def serve() -> None:
    from linalign.helix.server import Server, ServerConfig, load_bundle

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
    print(f"serving on {FLAGS.host}:{server.port} ({'TLS' if FLAGS.tls_cert else 'no TLS'}); "
          "Ctrl-C stops", flush=True)
    server.serve_forever()


def _client():
    from linalign.helix.client import HelixClient
    from linalign.helix.security import load_secret

    secret = load_secret(FLAGS.secret_file) if FLAGS.secret_file else None
    return HelixClient(FLAGS.port, FLAGS.host, max_message_bytes=FLAGS.max_message_mb << 20, tls_ca=FLAGS.tls_ca,
                       tls_cert=FLAGS.tls_client_cert, tls_key=FLAGS.tls_client_key, client_id=FLAGS.client_id,
                       secret=secret)


def check_map_out(path, overwrite: bool, flag: str = "--map_out") -> None:
    """Refuses a map path whose replacement could destroy something that is not a map.

    A map is one file; an existing directory is never replaced (it may be anything), and an
    existing file is replaced only with --overwrite and only if it loads as a map.
    """
    from linalign.align.affine_map import AffineMap

    p = pathlib.Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_dir():
        raise app.UsageError(f"{flag}={path} is an existing directory; a map is written as a new path "
                             "and an existing directory is never replaced")
    if not overwrite:
        raise app.UsageError(f"{flag}={path} exists; pass --overwrite to replace a map file")
    try:
        AffineMap.load(p)
    except Exception as e:  # noqa: BLE001 - any failure means: not a map we may replace
        raise app.UsageError(f"{flag}={path} exists and is not a map ({type(e).__name__}: {e}); "
                             "refusing to replace it") from None


def _output(out_dir, legacy, legacy_flag: str, name: str) -> pathlib.Path:
    """The file a client command writes: OUT_DIR/<name>, or the deprecated file flag's path."""
    if out_dir and legacy:
        raise app.UsageError(f"give --out_dir or {legacy_flag}, not both")
    if not (out_dir or legacy):
        raise app.UsageError("--out_dir is required")
    if legacy:
        return pathlib.Path(legacy)
    d = pathlib.Path(out_dir)
    if d.exists() and not d.is_dir():
        raise app.UsageError(f"--out_dir={out_dir} is an existing file; name a directory")
    if d.is_dir() and any(p.name != name for p in d.iterdir()):
        raise app.UsageError(f"--out_dir={out_dir} holds other files; name a new or empty directory")
    return d / name


class _Bar:
    """A tqdm bar over the client's exchanges of one message type (the client logs at INFO only)."""

    def __init__(self, client, msg_type, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, mininterval=1.0)
        self._call, self._type = client._call, msg_type
        client._call = self

    def __call__(self, sent_type, *args, **kwargs):
        out = self._call(sent_type, *args, **kwargs)
        if sent_type == self._type:
            self.bar.update(1)
        return out

    def close(self):
        self.bar.close()


def fit_main(argv) -> None:
    from linalign.align.lambdas import LambdaSpec

    _no_args(argv)
    spec = LambdaSpec.parse(FLAGS.lam)
    if spec.kind != "fixed":
        raise app.UsageError(f"--lam={FLAGS.lam}: the encrypted fit takes a fixed number, e.g. "
                             "--lam=1e-2 (cross-validation would need the provider's data)")
    path = _output(FLAGS.out_dir, FLAGS.map_out, "--map_out", "map.safetensors")
    flag = "--map_out" if FLAGS.map_out else "--out_dir"
    check_map_out(path, FLAGS.overwrite, flag)
    from tqdm.auto import tqdm

    from linalign.fhe.params import COEFF_FIT_PRESETS

    z = _load_npy(FLAGS.public, "public")
    # --params names a CKKS chain (seal-fit); the coefficient fit takes it only when it names
    # one of its own presets.
    params = FLAGS.params if FLAGS.fit_backend == "seal-fit" or FLAGS.params in COEFF_FIT_PRESETS else None
    with _client() as cl:
        bar = tqdm(total=int(z.shape[1]) + 1, desc="encrypted fit", unit="col", mininterval=1.0)
        try:
            affine = cl.fit(z, spec.value, params, backend=FLAGS.fit_backend,
                            progress=lambda done, total: bar.update(done - bar.n))
        finally:
            bar.close()
        stats = cl.stats
    check_map_out(path, FLAGS.overwrite, flag)  # again: the fit took minutes
    path.parent.mkdir(parents=True, exist_ok=True)
    affine.save(path, overwrite=FLAGS.overwrite)
    print(json.dumps({"map": str(path), "fit_seconds": stats.fit_seconds, "setup_up_bytes": stats.setup_up,
                      "fit_up_bytes": stats.fit_up, "fit_down_bytes": stats.fit_down}))


def query_main(argv) -> None:
    from linalign.align.affine_map import AffineMap
    from linalign.helix import messages as M

    _no_args(argv)
    if not FLAGS.map:
        raise app.UsageError("--map is required")
    path = _output(FLAGS.out_dir, FLAGS.out, "--out", "scores.npy")
    if FLAGS.out_dir and path.exists() and not FLAGS.overwrite:
        raise app.UsageError(f"{path} exists; pass --overwrite to replace it")
    z = _load_npy(FLAGS.embeddings, "embeddings")
    affine = AffineMap.load(FLAGS.map)
    z_hat = np.asarray(affine.apply(z), dtype=np.float64)
    with _client() as cl:
        info = cl.info()
        from linalign.fhe.params import COEFF_PRESETS

        # --params names the fit's CKKS chain; seal-coeff takes it only when it names one of its own.
        params = FLAGS.params if FLAGS.backend != "seal-coeff" or FLAGS.params in COEFF_PRESETS else None
        cl.setup_inference(int(info["d"]), int(info["k"]), FLAGS.backend, params, FLAGS.queries_per_message)
        bar = _Bar(cl, M.MsgType.QUERY, int(z.shape[0]), "encrypted queries", "query")
        try:
            scores = cl.query(z_hat)
        finally:
            bar.close()
        stats = cl.stats
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".npy") as tmp:
        np.save(tmp, scores)
    n = max(stats.queries, 1)
    print(json.dumps({"scores": str(path), "queries": stats.queries,
                      "ms_per_query": 1e3 * stats.query_seconds / n,
                      "setup_bytes": stats.setup_up + stats.setup_down,
                      "bytes_per_query": (stats.query_up + stats.query_down) / n}))


def serve_main(argv) -> None:
    _no_args(argv)
    serve()


def _no_args(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def _programs():
    from linalign.cli import Program

    return {
        "serve": Program(SERVE_USAGE, define_serve_flags, serve_main, required=("head",),
                         summary="provider: serve the head to clients"),
        "fit": Program(FIT_USAGE, define_fit_flags, fit_main, required=("public",),
                       summary="client: fit the map under encryption"),
        "query": Program(QUERY_USAGE, define_query_flags, query_main, required=("embeddings",),
                         summary="client: encrypted scores for queries"),
    }


PROGRAMS = _programs()

if __name__ == "__main__":
    from linalign.cli import module_main

    module_main("helix")
