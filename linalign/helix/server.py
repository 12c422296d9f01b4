"""HELIX provider (party A): serves encrypted inference and encrypted fitting on 127.0.0.1.

The provider holds a bundle (``save_bundle``): its head V [d, K], c [K], and optionally its
embeddings Z_A [n, d_a] of the public fitting set plus that set's fingerprint. It never holds a
secret key: every context it accepts goes through the FHE backends' provider constructors,
which refuse private contexts.

Connections are served one at a time. Each is bounded in requests, in idle time per frame and
in frame size; a bad frame gets an ERROR reply and the connection is closed, and the server
goes on with the next connection. The server itself stops after ``max_connections``
connections or ``max_seconds``, whichever comes first (0 = unbounded).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import socket
import time
from typing import Callable, Optional

import numpy as np
from absl import logging

from linalign.atomic import atomic_file
from linalign.fhe import base
from linalign.helix import messages as M

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
    max_connections: int = 0
    max_seconds: float = 0.0
    max_requests: int = 100_000  # per connection (a fit needs d_b + 1 columns)
    io_timeout_s: float = 30.0
    max_message_bytes: int = M.DEFAULT_MAX_MESSAGE_BYTES
    backends: tuple = ("seal", "tenseal", "tenseal-dot")


class Server:
    """Single-threaded HELIX provider."""

    def __init__(self, bundle: Bundle, config: ServerConfig = ServerConfig(),
                 on_receive: Optional[Callable[[M.Message], None]] = None):
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"HELIX serves on loopback only, got host {config.host!r}")
        self.bundle, self.config, self.on_receive = bundle, config, on_receive
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((config.host, config.port))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._head_cache = {}
        self._fit_cache = None

    def info(self) -> dict:
        b = self.bundle
        return {
            "d": int(b.v_dk.shape[0]), "k": int(b.v_dk.shape[1]),
            "d_a": None if b.z_na is None else int(b.z_na.shape[1]),
            "n_public": None if b.z_na is None else int(b.z_na.shape[0]),
            "backends": list(self.config.backends), **{k: v for k, v in b.meta.items()},
        }

    def serve_forever(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.max_seconds if cfg.max_seconds > 0 else None
        self._sock.settimeout(1.0)
        logging.info("HELIX provider listening on %s:%d", cfg.host, self.port)
        try:
            while cfg.max_connections <= 0 or self.connections < cfg.max_connections:
                if deadline is not None and time.monotonic() > deadline:
                    logging.info("max_seconds reached; stopping")
                    break
                try:
                    conn, _ = self._sock.accept()
                except socket.timeout:
                    continue
                self.connections += 1
                with conn:
                    self._handle(conn)
        finally:
            self._sock.close()

    def _handle(self, conn: socket.socket) -> None:
        cfg = self.config
        conn.settimeout(cfg.io_timeout_s)
        state = {"provider": None, "head": None, "fit": None}
        try:
            for _ in range(cfg.max_requests):
                msg = M.recv(conn, cfg.max_message_bytes, allow_eof=True, frame_timeout_s=cfg.io_timeout_s)
                if msg is None:
                    return
                if self.on_receive is not None:
                    self.on_receive(msg)
                if msg.type == M.MsgType.BYE:
                    return
                self._dispatch(conn, msg, state)
            self._error(conn, f"request limit of {cfg.max_requests} per connection reached")
        except socket.timeout:
            self._error(conn, f"timed out: no complete frame within {cfg.io_timeout_s} s")
        except (M.ProtocolError, base.FHEError, ValueError) as e:
            logging.warning("rejecting connection: %s", e)
            self._error(conn, str(e))
        except OSError as e:
            logging.warning("connection dropped: %s", e)
        except Exception as e:  # noqa: BLE001 - native HE libraries raise RuntimeError & co.
            # Whatever a single request does, the server must survive it and say why.
            logging.warning("request failed: %s: %s", type(e).__name__, e)
            self._error(conn, f"request failed: {type(e).__name__}: {e}")

    def _error(self, conn, text: str) -> None:
        try:
            M.send(conn, M.MsgType.ERROR, {"error": text[:2000]})
            # Half-close, then drain briefly: closing with unread input would make the kernel
            # send a reset that can destroy the ERROR frame before the client reads it.
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            for _ in range(64):
                if not conn.recv(1 << 16):
                    break
        except OSError:
            pass

    def _dispatch(self, conn, msg: M.Message, state: dict) -> None:
        t, b = msg.type, self.bundle
        if t == M.MsgType.INFO:
            M.send(conn, M.MsgType.INFO_REPLY, self.info())
        elif t == M.MsgType.INFER_SETUP:
            if len(msg.blobs) != 1:
                raise M.ProtocolError("INFER_SETUP carries exactly one public context")
            meta = base.context_meta(msg.blobs[0])
            if meta["backend"] not in self.config.backends:
                raise M.ProtocolError(f"backend {meta['backend']!r} not served; use {self.config.backends}")
            provider = base.make_provider(msg.blobs[0])
            if provider.is_private():
                raise base.PrivateContextError("refusing a context that holds a secret key")
            if (provider.d_in, provider.k_out) != b.v_dk.shape:
                raise M.ProtocolError(f"context is for d={provider.d_in}, K={provider.k_out}; head is {b.v_dk.shape}")
            state["provider"], state["head"] = provider, provider.prepare(b.v_dk, b.c_k)
            M.send(conn, M.MsgType.READY, {"d": provider.d_in, "k": provider.k_out})
        elif t == M.MsgType.QUERY:
            if state["provider"] is None:
                raise M.ProtocolError("QUERY before INFER_SETUP")
            if len(msg.blobs) != 1:
                raise M.ProtocolError("QUERY carries exactly one query blob")
            reply = state["provider"].apply(msg.blobs[0], state["head"])
            M.send(conn, M.MsgType.RESULT, {}, [reply])
        elif t == M.MsgType.FIT_SETUP:
            from linalign.fhe.fitting import FitProvider

            if b.z_na is None:
                raise M.ProtocolError("this provider has no public-set embeddings to fit on")
            if len(msg.blobs) != 1:
                raise M.ProtocolError("FIT_SETUP carries exactly one fit context")
            state["fit"] = FitProvider(msg.blobs[0], b.z_na)
            M.send(conn, M.MsgType.READY, {"n": int(b.z_na.shape[0]), "d_a": int(b.z_na.shape[1])})
        elif t == M.MsgType.FIT_COLUMN:
            if state["fit"] is None:
                raise M.ProtocolError("FIT_COLUMN before FIT_SETUP")
            if len(msg.blobs) != 1:
                raise M.ProtocolError("FIT_COLUMN carries exactly one column message")
            M.send(conn, M.MsgType.FIT_RESULT, {}, [state["fit"].cross(msg.blobs[0])])
        else:
            raise M.ProtocolError(f"unexpected message type {t.name} from a client")
