"""Every frame type, thousands of mutations: typed errors only, bounded time, no crash.

Mutations: byte flips (biased towards headers and metadata), truncation, appended bytes, a
random header length, type-confused metadata values, dropped, duplicated and truncated blobs.
Each mutated frame is decoded (``messages.decode``, the checks ``recv`` does) and, when it
decodes, handed to a provider session in the state where that frame type is expected, or to
the client-side parser of a reply. The only acceptable failures are the protocol's typed
errors (ProtocolError, FHEError and its subclasses, ValueError, PermissionError).
"""

import os
import time

import numpy as np
import pytest

from conftest import D_A, K, N_PUBLIC, make_data
from linalign.atomic import atomic_write_json
from linalign.fhe import base
from linalign.fhe.fitting import FitClient
from linalign.helix import messages as M
from linalign.helix import security as S
from linalign.helix.server import Bundle, Server, ServerConfig
from linalign.helix.session import Session

pytestmark = pytest.mark.fhe
TYPED = (M.ProtocolError, base.FHEError, ValueError, PermissionError)
WEIRD = [None, True, -1, 0, 2**70, 1e308, "x" * 300, [], {}, [1, 2], {"a": []}, "", -(2**63)]


def _mutate(frame: bytes, rng) -> bytes:
    op = rng.integers(7)
    b = bytearray(frame)
    if op == 0:  # byte flips, half of them in the first 300 bytes
        for _ in range(int(rng.integers(1, 5))):
            hi = min(len(b), 300) if rng.random() < 0.5 else len(b)
            b[int(rng.integers(hi))] ^= int(rng.integers(1, 256))
        return bytes(b)
    if op == 1:
        return bytes(b[: int(rng.integers(len(b)))])
    if op == 2:
        return bytes(b) + rng.bytes(int(rng.integers(1, 64)))
    if op == 3:
        b[8:12] = int(rng.integers(0, 2**32)).to_bytes(4, "little")
        return bytes(b)
    msg = M.decode(frame)
    meta, blobs = dict(msg.meta), list(msg.blobs)
    if op == 4:  # type-confused metadata
        keys = list(meta) + ["j", "kind", "client_id", "nonce", "mac", "backend", "params", "n"]
        meta[keys[int(rng.integers(len(keys)))]] = WEIRD[int(rng.integers(len(WEIRD)))]
        return M.encode(msg.type, meta, blobs)
    if op == 5 and blobs:  # inner container of the first blob: metadata confusion
        try:
            inner, parts = base.unpack_blobs(blobs[0])
        except base.DeserializationError:
            return M.encode(msg.type, meta, blobs)
        keys = list(inner) or ["kind"]
        inner[keys[int(rng.integers(len(keys)))]] = WEIRD[int(rng.integers(len(WEIRD)))]
        if parts and rng.random() < 0.5:
            parts = parts[:-1] if rng.random() < 0.5 else parts + parts[:1]
        if parts and rng.random() < 0.3:
            parts[0] = parts[0][: int(rng.integers(len(parts[0]) + 1))]
        return M.encode(msg.type, meta, [base.pack_blobs(inner, parts)] + blobs[1:])
    # op 6: drop or duplicate outer blobs, or swap the frame type
    if rng.random() < 0.5:
        blobs = blobs[1:] if blobs else [rng.bytes(10)]
    else:
        blobs = blobs + blobs
    t = msg.type if rng.random() < 0.7 else M.MsgType(int(rng.integers(1, 15)))
    return M.encode(t, meta, blobs)


def _one(m):
    """What HelixClient checks before decrypting a reply."""
    if len(m.blobs) != 1:
        raise M.ProtocolError(f"{m.type.name} carries {len(m.blobs)} blobs, want 1")
    return m.blobs[0]


def test_fuzz_every_message_type(tmp_path):
    z_b, z_a, v, c = make_data()
    rng = np.random.default_rng(20261202)
    secret = os.urandom(32)
    atomic_write_json(tmp_path / "secrets.json", {"org": secret.hex()})
    open_srv = Server(Bundle(v, c, z_a[:N_PUBLIC], {}), ServerConfig(query_budget=10**9, fit_budget=10**9))
    auth_srv = Server(Bundle(v, c, z_a[:N_PUBLIC], {}), ServerConfig(secrets_file=str(tmp_path / "secrets.json")))
    client = base.make_client("seal", D_A, K)
    fc = FitClient(z_b[:N_PUBLIC], D_A)

    def session(state):
        srv = auth_srv if state == "auth" else open_srv
        s = Session(srv, "127.0.0.1", None)
        s.handle(M.Message(M.MsgType.HELLO, {"client_id": "org", "nonce": "00" * 32}, []))
        if state == "infer":
            s.handle(M.Message(M.MsgType.INFER_SETUP, {}, [client.public_context()]))
        if state == "fit":
            s.handle(M.Message(M.MsgType.FIT_SETUP, {}, [fc.public_context()]))
        return s

    hello = M.encode(M.MsgType.HELLO, {"client_id": "org", "nonce": "00" * 32})
    infer, fit = session("infer"), session("fit")
    fc.set_provider_bounds(fit.fit.announce())
    cases = {  # frame -> (session factory, count)
        "HELLO": (hello, lambda: Session(open_srv, "127.0.0.1", None), 300),
        "AUTH": (M.encode(M.MsgType.AUTH, {"mac": "00" * 32}), lambda: session("auth"), 300),
        "INFO": (M.encode(M.MsgType.INFO), lambda: infer, 300),
        "BYE": (M.encode(M.MsgType.BYE), lambda: infer, 100),
        "INFER_SETUP": (M.encode(M.MsgType.INFER_SETUP, {}, [client.public_context()]), lambda: session("open"), 40),
        "QUERY": (M.encode(M.MsgType.QUERY, {}, [client.encrypt(np.full(D_A, 0.1))]), lambda: infer, 300),
        "FIT_SETUP": (M.encode(M.MsgType.FIT_SETUP, {}, [fc.public_context()]), lambda: session("open"), 25),
        "FIT_COLUMN": (M.encode(M.MsgType.FIT_COLUMN, {}, [fc.encrypt_column(1)]), lambda: fit, 300),
    }
    q = client.encrypt(np.full(D_A, 0.1))
    reply = infer.handle(M.Message(M.MsgType.QUERY, {}, [q]))[0]
    col_reply = session("fit").handle(M.Message(M.MsgType.FIT_COLUMN, {}, [fc.encrypt_column(0)]))[0]
    client_side = {
        "RESULT": (M.encode(*reply), lambda m: client.decrypt(_one(m)), 300),
        "FIT_RESULT": (M.encode(*col_reply), lambda m: fc.decrypt_column(_one(m), 0), 300),
        "READY": (M.encode(M.MsgType.READY, {"mac": "00"}), lambda m: None, 100),
        "ERROR": (M.encode(M.MsgType.ERROR, {"error": "x"}), lambda m: None, 100),
        "CHALLENGE": (M.encode(M.MsgType.CHALLENGE, {"nonce": "00" * 32}), lambda m: S.parse_hello(m.meta), 100),
    }
    t0 = time.monotonic()
    counts = {"frames": 0, "decoded": 0, "handled": 0, "accepted": 0}
    for name, (frame, make_session, n) in cases.items():
        for _ in range(n):
            bad = _mutate(frame, rng)
            counts["frames"] += 1
            try:
                msg = M.decode(bad)
            except TYPED:
                continue
            counts["decoded"] += 1
            try:
                make_session().handle(msg)
                counts["accepted"] += 1
            except TYPED:
                pass
            counts["handled"] += 1
    for name, (frame, parse, n) in client_side.items():
        for _ in range(n):
            counts["frames"] += 1
            try:
                parse(M.decode(_mutate(frame, rng)))
            except TYPED:
                pass
    elapsed = time.monotonic() - t0
    open_srv.pool.shutdown()
    auth_srv.pool.shutdown()
    print("fuzz counts", counts, f"{elapsed:.1f} s")
    assert counts["frames"] >= 2500 and counts["handled"] >= 500, counts
    assert elapsed < 120, (elapsed, counts)
