"""HELIX provider (party A): serves encrypted inference and encrypted fitting.

The provider holds a bundle (``save_bundle``): its head V [d, K], c [K], and optionally its
embeddings Z_A [n, d_a] of the public fitting set plus that set's fingerprint. It never holds a
secret key: every context it accepts goes through the FHE backends' provider constructors,
which refuse private contexts, and every reply is sanitised (``linalign.fhe.privacy``).

Concurrency and limits (``ServerConfig``):

* each accepted connection gets its own thread, which only does I/O and the protocol state
  machine (``session.Session``); all encrypted work runs on one bounded pool of ``workers``
  threads. A client has at most one request in flight (request-reply), so a request waits at
  most ceil((C - 1) / workers) jobs ahead of it, C the number of open connections (<=
  ``max_open``): idle, chatty or trickling clients hold a thread of their own, never a worker.
* per connection: ``idle_timeout_s`` for the next frame to start, ``frame_timeout_s`` for a
  started frame (or the TLS handshake) to finish, ``max_connection_s`` of wall clock in all,
  ``max_requests`` frames; per peer address ``max_per_peer`` open connections, ``max_open`` in
  total (refused connections are closed at once).
* a bad frame gets an ERROR reply and the connection is closed; the server goes on.
* the server stops after ``max_connections`` accepted connections or ``max_seconds``
  (0 = unbounded), after the open connections end.

Two machines: ``tls_cert``/``tls_key`` turn on TLS, ``tls_client_ca`` requires client
certificates, ``secrets_file`` requires the shared-secret challenge-response; a non-loopback
``host`` is refused without TLS and one of the two (``security.check_exposure``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pathlib
import socket
import threading
import time
from typing import Callable, Optional

import numpy as np
from absl import logging

from linalign.atomic import atomic_file
from linalign.fhe import base
from linalign.helix import messages as M
from linalign.helix import security as S
from linalign.helix.session import SERVED_BACKENDS, Session, head_scale, log_line

BUNDLE_KEYS = {"v_dk", "c_k", "z_na", "meta_json"}


@dataclasses.dataclass
class Bundle:
    """What the provider serves.

    Attributes:
      v_dk: [d, K] head weights.
      c_k: [K] head bias.
      z_na: optional [n, d_a] provider embeddings of the public fitting set.
      meta: JSON-able details (public_fingerprint, label_names, model names).
    """

    v_dk: np.ndarray
    c_k: np.ndarray
    z_na: Optional[np.ndarray] = None
    meta: dict = dataclasses.field(default_factory=dict)


def save_bundle(path, bundle: Bundle) -> pathlib.Path:
    """Writes the bundle as .npz atomically (temporary name, then os.replace)."""
    path = pathlib.Path(path)
    v, c = base.check_head(bundle.v_dk, bundle.c_k, *np.shape(bundle.v_dk))
    arrays = {"v_dk": v.astype(np.float32), "c_k": c.astype(np.float32),
              "meta_json": np.frombuffer(json.dumps(bundle.meta).encode(), dtype=np.uint8)}
    if bundle.z_na is not None:
        arrays["z_na"] = np.asarray(bundle.z_na, dtype=np.float32)
    with atomic_file(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def load_bundle(path) -> Bundle:
    """Reads a bundle; raises FileNotFoundError / ValueError naming the problem."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"provider bundle {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"provider bundle {path} is not a readable .npz ({e})") from None
    unknown = set(data) - BUNDLE_KEYS
    if unknown or not {"v_dk", "c_k"} <= set(data):
        raise ValueError(f"provider bundle {path}: keys {sorted(data)}; need v_dk, c_k (+ z_na, meta_json)")
    v = np.asarray(data["v_dk"], np.float64)
    if v.ndim != 2:
        raise ValueError(f"provider bundle {path}: v_dk must be 2-D, got {v.shape}")
    v, c = base.check_head(v, data["c_k"], *v.shape)
    meta = json.loads(bytes(data["meta_json"]).decode()) if "meta_json" in data else {}
    z = np.asarray(data["z_na"], np.float64) if "z_na" in data else None
    return Bundle(v, c, z, meta)


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 2
    max_open: int = 64
    max_per_peer: int = 16
    idle_timeout_s: float = 30.0
    frame_timeout_s: float = 30.0
    max_connection_s: float = 3600.0
    max_requests: int = 100_000  # per connection (a fit needs d_b + 2)
    max_message_bytes: int = M.DEFAULT_MAX_MESSAGE_BYTES
    max_connections: int = 0
    max_seconds: float = 0.0
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_client_ca: Optional[str] = None
    secrets_file: Optional[str] = None
    query_budget: int = 100_000  # per identity; d + 1 queries recover V and c
    fit_budget: int = 4  # fits per identity
    request_log: Optional[str] = None
    flood_bits: int = 12
    input_norm: float = 0.0  # largest query norm served; 0 = 2 x the largest public-set row norm


class Server:
    """HELIX provider: accept loop, one I/O thread per connection, a bounded worker pool."""

    def __init__(self, bundle: Bundle, config: ServerConfig = ServerConfig(),
                 on_receive: Optional[Callable[[M.Message], None]] = None):
        from linalign.fhe.privacy import FloodPolicy

        cfg = config
        if cfg.workers < 1 or cfg.max_open < 1 or cfg.max_per_peer < 1:
            raise ValueError(f"workers, max_open, max_per_peer must be >= 1: {cfg}")
        tls = bool(cfg.tls_cert or cfg.tls_key)
        if tls and not (cfg.tls_cert and cfg.tls_key):
            raise ValueError("TLS needs both a certificate and a key file")
        S.check_exposure(cfg.host, tls, bool(cfg.secrets_file or cfg.tls_client_ca), "serve address")
        if cfg.tls_client_ca and not tls:
            raise ValueError("a client CA (mutual TLS) needs TLS: give the certificate and key")
        self.bundle, self.config, self.on_receive = bundle, cfg, on_receive
        self.tls = S.server_tls_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if tls else None
        self.authenticator = S.SecretAuthenticator(S.load_secrets(cfg.secrets_file)) if cfg.secrets_file else None
        self.policy = FloodPolicy(cfg.flood_bits)
        self.input_norm = self._input_norm()
        self.budget = S.Budget(cfg.query_budget, cfg.fit_budget)
        self.limiter = S.PeerLimiter(cfg.max_open, cfg.max_per_peer)
        self.requests = S.request_logger(cfg.request_log)
        self.pool = concurrent.futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="helix-worker")
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((cfg.host, cfg.port))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list = []
        self._cache_lock = threading.Lock()
        self._fit_lock = threading.Lock()
        self._infer_bounds: dict = {}
        self._fit_bounds: dict = {}

    def _input_norm(self) -> float:
        if self.config.input_norm > 0:
            return float(self.config.input_norm)
        if "input_norm" in self.bundle.meta:
            return float(self.bundle.meta["input_norm"])
        if self.bundle.z_na is not None:
            return 2.0 * float(np.linalg.norm(self.bundle.z_na, axis=1).max())
        raise ValueError("no input norm: give ServerConfig.input_norm (--input_norm) or public-set embeddings")

    def info(self) -> dict:
        b = self.bundle
        return {
            "d": int(b.v_dk.shape[0]), "k": int(b.v_dk.shape[1]),
            "d_a": None if b.z_na is None else int(b.z_na.shape[1]),
            "n_public": None if b.z_na is None else int(b.z_na.shape[0]),
            "backends": list(SERVED_BACKENDS), "input_norm": self.input_norm,
            "flood_bits": self.policy.flood_bits, **{k: v for k, v in b.meta.items()},
        }

    # -- heavy work, run on the pool ---------------------------------------------------------
    def prepare_inference(self, ctx_bytes: bytes):
        b = self.bundle
        provider = base.make_provider(ctx_bytes)
        if provider.is_private():
            raise base.PrivateContextError("refusing a context that holds a secret key")
        if (provider.d_in, provider.k_out) != b.v_dk.shape:
            raise M.ProtocolError(f"context is for d={provider.d_in}, K={provider.k_out}; head is {b.v_dk.shape}")
        try:
            headroom = provider.reply_headroom_bits
        except base.FHEError as e:
            raise base.FHEError(f"parameters {provider.params.coeff_mod_bit_sizes} cannot carry circuit-private "
                                f"replies ({e}); use seal-coeff, or seal with the n8192 or n16384 preset") from None
        scale, score_bound = head_scale(self.input_norm, b.v_dk, b.c_k, headroom)
        v, c = b.v_dk * scale, b.c_k * scale
        batch = provider.queries_per_message  # the bound is the circuit's: batched contexts differ
        key = json.dumps([provider.name, provider.params.to_dict(), batch], sort_keys=True)
        with self._cache_lock:
            if key not in self._infer_bounds:
                self._infer_bounds[key] = provider.calibrate(v, c, self.input_norm, self.policy)
            bound = self._infer_bounds[key]
        std = provider.enable_privacy(bound, self.policy)
        head = provider.prepare(v, c)
        return provider, head, {"d": provider.d_in, "k": provider.k_out, "head_scale": scale,
                                "score_bound": score_bound, "input_norm": self.input_norm, "flood_std": std,
                                "flood_bits": self.policy.flood_bits}

    def prepare_fit(self, ctx_bytes: bytes):
        from linalign.fhe.fitting import make_fit_provider

        meta, _ = base.unpack_blobs(ctx_bytes, what="fit context")
        key = json.dumps([meta.get(k) for k in ("backend", "params", "n", "d_b", "d_a", "chunk", "batch", "cols")],
                         sort_keys=True)
        with self._fit_lock:  # one calibration per layout; later fits reuse its bound
            if key not in self._fit_bounds:
                fit = make_fit_provider(ctx_bytes, self.bundle.z_na, self.policy, None)
                self._fit_bounds[key] = fit.bound
                return fit
            bound = self._fit_bounds[key]
        return make_fit_provider(ctx_bytes, self.bundle.z_na, self.policy, bound)

    # -- connections ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.max_seconds if cfg.max_seconds > 0 else None
        self._sock.settimeout(0.25)
        logging.info("HELIX provider listening on %s:%d (TLS %s, %d workers)", cfg.host, self.port,
                     "on" if self.tls else "off", cfg.workers)
        try:
            while not self._stop.is_set() and (cfg.max_connections <= 0 or self.connections < cfg.max_connections):
                if deadline is not None and time.monotonic() > deadline:
                    logging.info("max_seconds reached; stopping")
                    break
                try:
                    conn, addr = self._sock.accept()
                    M.no_delay(conn)
                except socket.timeout:
                    continue
                peer = str(addr[0])
                refused = self.limiter.acquire(peer)
                if refused:
                    logging.warning("refusing connection: %s", refused)
                    self._log(None, peer, "CONNECT", 0, 0, time.monotonic(), refused)
                    conn.close()
                    continue
                self.connections += 1
                th = threading.Thread(target=self._connection, args=(conn, peer), daemon=True)
                th.start()
                self._threads = [t for t in self._threads if t.is_alive()] + [th]
        finally:
            self._sock.close()
            # Natural end: let open connections finish (each is bounded by max_connection_s);
            # stop(): give them a moment, then leave them to their own time limits.
            wait = 2.0 if self._stop.is_set() else cfg.max_connection_s
            for th in self._threads:
                th.join(timeout=wait)
            self.pool.shutdown(wait=not self._stop.is_set())

    def _log(self, identity, peer, mtype, n_in, n_out, t0, status) -> None:
        self.requests.info(json.dumps(log_line(identity, peer, mtype, n_in, n_out, t0, status)))

    def _connection(self, conn: socket.socket, peer: str) -> None:
        cfg = self.config
        session = None
        try:
            if self.tls is not None:
                conn.settimeout(cfg.frame_timeout_s)
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ValueError) as e:  # handshake failed, timed out, or a bad certificate
                    logging.warning("TLS handshake with %s failed: %s", peer, e)
                    self._log(None, peer, "TLS", 0, 0, time.monotonic(), f"handshake failed: {e}")
                    return
            session = Session(self, peer, S.cert_identity(conn))
            self._serve(conn, session)
        finally:
            self.limiter.release(peer)
            try:
                conn.close()
            except OSError:
                pass

    def _serve(self, conn, session: Session) -> None:
        cfg = self.config
        end = time.monotonic() + cfg.max_connection_s
        mtype = "?"
        t0 = time.monotonic()
        try:
            for _ in range(cfg.max_requests):
                msg = M.recv(conn, cfg.max_message_bytes, allow_eof=True, frame_timeout_s=cfg.frame_timeout_s,
                             idle_timeout_s=cfg.idle_timeout_s, deadline=end)
                t0 = time.monotonic()
                if msg is None:
                    return
                mtype = msg.type.name
                if self.on_receive is not None:
                    self.on_receive(msg)
                if msg.type == M.MsgType.BYE:
                    return
                n_in = sum(len(b) for b in msg.blobs)
                n_out = 0
                for reply in session.handle(msg):
                    n_out += M.send(conn, *reply)
                self._log(session.identity, session.peer, mtype, n_in, n_out, t0, "ok")
            self._error(conn, session, mtype, t0, f"request limit of {cfg.max_requests} per connection reached")
        except socket.timeout:
            what = "connection time limit reached" if time.monotonic() >= end else "no complete frame in time"
            self._error(conn, session, mtype, t0, f"timed out: {what} (idle {cfg.idle_timeout_s} s, "
                        f"frame {cfg.frame_timeout_s} s, connection {cfg.max_connection_s} s)")
        except (M.ProtocolError, base.FHEError, ValueError, PermissionError) as e:
            logging.warning("rejecting %s: %s", session.peer, e)
            self._error(conn, session, mtype, t0, str(e))
        except OSError as e:
            logging.warning("connection from %s dropped: %s", session.peer, e)
            self._log(session.identity, session.peer, mtype, 0, 0, t0, f"dropped: {e}")
        except Exception as e:  # noqa: BLE001 - native HE libraries raise RuntimeError & co.
            # Whatever a single request does, the server must survive it and say why.
            logging.warning("request failed: %s: %s", type(e).__name__, e)
            self._error(conn, session, mtype, t0, f"request failed: {type(e).__name__}: {e}")

    def _error(self, conn, session: Session, mtype: str, t0: float, text: str) -> None:
        self._log(session.identity, session.peer, mtype, 0, 0, t0, f"error: {text[:300]}")
        try:
            conn.settimeout(2.0)
            M.send(conn, M.MsgType.ERROR, {"error": text[:2000]})
            # Half-close, then drain briefly: closing with unread input would make the kernel
            # send a reset that can destroy the ERROR frame before the client reads it.
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            for _ in range(64):
                if not conn.recv(1 << 16):
                    break
        except (OSError, ValueError):
            pass
