"""One HELIX connection on the provider side: the protocol state machine.

  (TLS handshake) -> HELLO -> [CHALLENGE -> AUTH] -> READY
    -> INFO*                     any time after READY
    -> INFER_SETUP -> QUERY*     at most one INFER_SETUP per connection
    -> FIT_SETUP -> FIT_COLUMN x messages  at most one fit per connection; the fit backend's
                                            state machine answers each column (seal-fit) or
                                            column group (seal-coeff-fit) exactly once
    -> BYE

Anything out of order, malformed, over a limit or over the client's budget raises, and the
server answers ERROR and closes. Heavy work (parsing keys, calibration, encrypted evaluation)
runs on the server's bounded worker pool; this class only decides what may happen next.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Callable

import numpy as np

from linalign.fhe import base
from linalign.helix import messages as M
from linalign.helix import security as S

SERVED_BACKENDS = ("seal", "seal-coeff")  # the backends whose replies are sanitised (linalign.fhe.privacy)
SCORE_TARGET_BITS = 3  # scaled |score| <= 2^(reply headroom - 3)


class Session:
    """Per-connection state. ``handle(msg)`` returns the reply frames to send, in order.

    Args:
      server: the owning Server (bundle, config, caches, budget, worker pool).
      peer: the peer address; cert_id: the TLS client-certificate identity or None.
    """

    def __init__(self, server, peer: str, cert_id: str | None):
        self.server, self.peer = server, peer
        self.identity: str | None = None
        self.cert_id = cert_id
        self._nonces = None
        self._client_id = None
        self.provider = None
        self.head = None
        self.fit = None
        self._infer_done = False
        self._fit_started = False

    # -- helpers --------------------------------------------------------------------------
    def _run(self, fn: Callable, *args):
        """Runs heavy work on the shared pool; this connection's thread waits for it."""
        return self.server.pool.submit(fn, *args).result()

    @staticmethod
    def _one_blob(msg: M.Message, what: str) -> bytes:
        if len(msg.blobs) != 1:
            raise M.ProtocolError(f"{what} carries exactly one blob, got {len(msg.blobs)}")
        return msg.blobs[0]

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, msg: M.Message) -> "list[tuple]":
        t = msg.type
        if self.identity is None:
            return self._authenticate(msg)
        if t == M.MsgType.INFO:
            return [(M.MsgType.INFO_REPLY, {**self.server.info(), "budget_left": self.server.budget.left(self.identity)})]
        if t == M.MsgType.INFER_SETUP:
            return self._infer_setup(msg)
        if t == M.MsgType.QUERY:
            if self.provider is None:
                raise M.ProtocolError("QUERY before INFER_SETUP")
            blob = self._one_blob(msg, "QUERY")
            # A batched context carries B queries per ciphertext: the budget counts queries.
            self.server.budget.spend(self.identity, "query", self.provider.queries_per_message)
            return [(M.MsgType.RESULT, {}, [self._run(self.provider.apply, blob, self.head)])]
        if t == M.MsgType.FIT_SETUP:
            return self._fit_setup(msg)
        if t == M.MsgType.FIT_COLUMN:
            if self.fit is None:
                raise M.ProtocolError("FIT_COLUMN before FIT_SETUP")
            return [(M.MsgType.FIT_RESULT, {}, [self._run(self.fit.cross, self._one_blob(msg, "FIT_COLUMN"))])]
        raise M.ProtocolError(f"unexpected message type {t.name} from a client")

    def _authenticate(self, msg: M.Message):
        srv = self.server
        if self._nonces is None:
            if msg.type != M.MsgType.HELLO:
                raise M.ProtocolError(f"expected HELLO first, got {msg.type.name}")
            cid, nonce_c = S.parse_hello(msg.meta)
            if srv.authenticator is None:
                # No shared secrets: the identity is the client certificate (mutual TLS) or, on
                # loopback only, the peer address; the client's chosen id is a label.
                self.identity = self.cert_id or f"{self.peer}"
                return [(M.MsgType.READY, {"identity": self.identity, "auth": "certificate" if self.cert_id else "none"})]
            self._client_id, nonce_s = cid, secrets.token_bytes(S.NONCE_BYTES)
            self._nonces = (nonce_c, nonce_s)
            return [(M.MsgType.CHALLENGE, {"nonce": nonce_s.hex()})]
        if msg.type != M.MsgType.AUTH:
            raise M.ProtocolError(f"expected AUTH after CHALLENGE, got {msg.type.name}")
        secret = srv.authenticator.verify(self._client_id, *self._nonces, msg.meta.get("mac", ""))
        if secret is None:
            raise S.AuthError("authentication failed")
        self.identity = f"id:{self._client_id}"
        proof = S.mac(secret, "server", self._client_id, *self._nonces)
        return [(M.MsgType.READY, {"identity": self.identity, "auth": "secret", "mac": proof})]

    def _infer_setup(self, msg: M.Message):
        if self._infer_done:
            raise M.ProtocolError("INFER_SETUP was already done on this connection")
        self._infer_done = True
        ctx = self._one_blob(msg, "INFER_SETUP")
        meta = base.context_meta(ctx)
        if meta["backend"] not in SERVED_BACKENDS:
            raise M.ProtocolError(f"backend {meta['backend']!r} not served (replies must be circuit-private); "
                                  f"use {SERVED_BACKENDS}")
        provider, head, announced = self._run(self.server.prepare_inference, ctx)
        self.provider, self.head = provider, head
        return [(M.MsgType.READY, announced)]

    def _fit_setup(self, msg: M.Message):
        srv = self.server
        if srv.bundle.z_na is None:
            raise M.ProtocolError("this provider has no public-set embeddings to fit on")
        if self._fit_started:
            raise M.ProtocolError("one fit per connection: FIT_SETUP was already sent")
        self._fit_started = True
        ctx = self._one_blob(msg, "FIT_SETUP")
        srv.budget.spend(self.identity, "fit")
        self.fit = self._run(srv.prepare_fit, ctx)
        return [(M.MsgType.READY, {"n": int(srv.bundle.z_na.shape[0]), "d_a": int(srv.bundle.z_na.shape[1]),
                                   **self.fit.announce()})]


def head_scale(input_norm: float, v_dk: np.ndarray, c_k: np.ndarray, headroom_bits: int) -> "tuple[float, float]":
    """(power-of-two scale s, scaled score bound) with (|z| max|V col| + max|c|) s <= 2^(h - 3).

    The provider serves s V, s c and announces s; the client divides the scores by s. Any
    query with |z| <= input_norm then stays inside the reply's headroom.
    """
    bound = input_norm * float(np.linalg.norm(v_dk, axis=0).max()) + float(np.abs(c_k).max())
    target = 2.0 ** (headroom_bits - SCORE_TARGET_BITS)
    s = 2.0 ** -max(0, math.ceil(math.log2(max(bound, 1e-300) / target)))
    return s, bound * s


def log_line(identity, peer, mtype, bytes_in, bytes_out, t0, status) -> dict:
    return {"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "identity": identity, "peer": peer,
            "type": mtype, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "ms": round(1e3 * (time.monotonic() - t0), 2), "status": status}
