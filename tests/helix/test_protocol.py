"""HELIX over a real socket: fit + query end to end, fuzzing, key hygiene, bounds."""

import os
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import D_A, K, N_PUBLIC, REPO, make_data, start_server
from linalign.fhe import base
from linalign.helix import messages as M
from linalign.helix.client import HelixClient

pytestmark = pytest.mark.fhe


def _plain_map(z_b, z_a, lam):
    from linalign.align.solve import solve
    from linalign.align.stats import from_arrays

    return solve(from_arrays(z_b, z_a), lam)


def test_fit_and_query_match_plaintext(server):
    proc, port = server
    z_b, z_a, v, c = make_data()
    lam = 1e-2
    with HelixClient(port) as cl:
        info = cl.info()
        assert (info["d"], info["k"], info["d_a"], info["n_public"]) == (D_A, K, D_A, N_PUBLIC)
        affine = cl.fit(z_b[:N_PUBLIC], lam)
        w_ref, b_ref = _plain_map(z_b[:N_PUBLIC], z_a[:N_PUBLIC], lam)
        # CKKS error on the cross term (~1e-7 relative) is far below float32 solve error.
        np.testing.assert_allclose(np.asarray(affine.w), np.asarray(w_ref), rtol=0, atol=1e-3)
        np.testing.assert_allclose(np.asarray(affine.b), np.asarray(b_ref), rtol=0, atol=1e-3)
        z_hat = np.asarray(affine.apply(z_b[N_PUBLIC:]), np.float64)
        cl.setup_inference(D_A, K, "seal")
        scores = cl.query(z_hat)
        # The flood is the error: its std (announced, scaled units) over the head scale.
        std = cl.announced["flood_std"] / cl.announced["head_scale"]
        assert std < 5e-3
        np.testing.assert_allclose(scores, z_hat @ v + c, rtol=0, atol=6 * std)
        assert cl.stats.queries == 50
        assert (cl.stats.query_up + cl.stats.query_down) / 50 < 1_000_000


def test_coefficient_backend_served(server):
    """``seal-coeff`` end to end: no Galois keys in the setup, flooded replies within 6 std."""
    proc, port = server
    z_b, z_a, v, c = make_data()
    x = z_a[N_PUBLIC:N_PUBLIC + 20]
    with HelixClient(port) as cl:
        assert cl._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # no Nagle stall per message
        cl.setup_inference(D_A, K, "seal-coeff")
        scores = cl.query(x)
        std = cl.announced["flood_std"] / cl.announced["head_scale"]
        assert 0 < std < 1e-3
        np.testing.assert_allclose(scores, x @ v + c, rtol=0, atol=6 * std + 1e-4)
        assert cl.stats.setup_up < 100_000  # the public key alone
        assert (cl.stats.query_up + cl.stats.query_down) / 20 < 50_000
    with HelixClient(port) as cl:  # four queries per message
        cl.setup_inference(D_A, K, "seal-coeff", batch=4)
        scores = cl.query(x[:10])  # 4 + 4 + 2
        std = cl.announced["flood_std"] / cl.announced["head_scale"]
        np.testing.assert_allclose(scores, x[:10] @ v + c, rtol=0, atol=6 * std + 1e-4)
        assert cl.stats.queries == 10


def _raw(port, data: bytes, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have answered and half-closed
        return M.recv(s, allow_eof=True) if read else None
    finally:
        s.close()


def _valid_query_works(port):
    z_b, _, v, c = make_data()
    with HelixClient(port) as cl:
        cl.setup_inference(D_A, K, "seal")
        x = np.linspace(-0.5, 0.5, D_A)[None]
        std = cl.announced["flood_std"] / cl.announced["head_scale"]
        np.testing.assert_allclose(cl.query(x), x @ v + c, rtol=0, atol=6 * std)


def test_fuzz_bad_frames_then_valid_query(server):
    proc, port = server
    rng = np.random.default_rng(7)
    good = M.encode(M.MsgType.INFO)
    hdr = struct.Struct("<4sHHI")
    cases = {
        "bad magic": b"XXXX" + good[4:],
        "version": hdr.pack(M.MAGIC, 99, int(M.MsgType.INFO), 0),
        "unknown type": hdr.pack(M.MAGIC, M.PROTOCOL_VERSION, 999, 0),
        "exceeds the limit": hdr.pack(M.MAGIC, M.PROTOCOL_VERSION, int(M.MsgType.QUERY), 2**31),
        "truncated": good[:-3] if len(good) > M.HEADER.size + 3 else good[: M.HEADER.size + 1] + b"",
        "expected HELLO first": M.encode(M.MsgType.QUERY, {}, [b"x"]),
        "payload": hdr.pack(M.MAGIC, M.PROTOCOL_VERSION, int(M.MsgType.INFO), 5) + b"abcde",
    }
    # a header declaring more payload than is sent is a truncation too
    cases["truncated"] = hdr.pack(M.MAGIC, M.PROTOCOL_VERSION, int(M.MsgType.INFO), 100) + b"\x00" * 10
    for expect, frame in cases.items():
        reply = _raw(port, frame)
        assert reply is not None and reply.type == M.MsgType.ERROR, expect
        assert expect.split()[0].lower() in reply.meta["error"].lower(), (expect, reply.meta)
    for i in range(12):
        junk = rng.bytes(int(rng.integers(1, 300)))
        if i % 3 == 0:  # valid header, random payload
            junk = hdr.pack(M.MAGIC, M.PROTOCOL_VERSION, int(rng.integers(1, 15)), len(junk)) + junk
        reply = _raw(port, junk)
        assert reply is None or reply.type in (M.MsgType.ERROR, M.MsgType.INFO_REPLY)
    # a garbage ciphertext after a real setup: error reply, not a crash
    client = base.make_client("seal", D_A, K)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    M.send(s, M.MsgType.HELLO, {"client_id": "fuzz", "nonce": "00" * 32})
    assert M.recv(s).type == M.MsgType.READY
    M.send(s, M.MsgType.INFER_SETUP, {}, [client.public_context()])
    assert M.recv(s).type == M.MsgType.READY
    q = client.encrypt(np.ones(D_A))
    meta, blobs = base.unpack_blobs(q)
    M.send(s, M.MsgType.QUERY, {}, [base.pack_blobs(meta, [blobs[0][: len(blobs[0]) // 3]])])
    r = M.recv(s)
    assert r.type == M.MsgType.ERROR and "a ciphertext here has" in r.meta["error"]
    s.close()
    assert proc.poll() is None, "server died"
    _valid_query_works(port)


def test_wrong_shape_context_refused(server):
    _, port = server
    with HelixClient(port) as cl:
        with pytest.raises(M.PeerError, match=r"context is for d=5"):
            cl.setup_inference(5, K, "seal")


def test_provider_receives_no_secret_key(bundle_path, tmp_path):
    """Every frame the provider receives is recorded; none holds or parses as a secret key."""
    from linalign.fhe.seal_backend import make_context
    from linalign.helix.server import Server, ServerConfig, load_bundle

    received = []
    srv = Server(load_bundle(bundle_path), ServerConfig(max_connections=2, max_seconds=60), received.append)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    z_b, *_ = make_data()
    secret_windows = []
    with HelixClient(srv.port) as cl:
        from linalign.fhe import coeff_fit, fitting

        classes = (fitting.FitClient, coeff_fit.CoeffFitClient)
        originals = [c.__init__ for c in classes]

        def spying(orig):
            def spy(self, *a, **k):
                orig(self, *a, **k)
                secret_windows.append(self.secret_key_bytes())
            return spy

        for c, orig in zip(classes, originals):
            c.__init__ = spying(orig)
        try:
            cl.fit(z_b[:N_PUBLIC], 1e-2)  # the default backend, seal-coeff-fit
        finally:
            for c, orig in zip(classes, originals):
                c.__init__ = orig
        assert secret_windows  # the client's key (and, in-process, the calibration key of the provider)
        cl.setup_inference(D_A, K, "seal")
        secret_windows.append(cl._backend.secret_key_bytes())
        cl.query(0.5 * np.ones((2, D_A)))
    with HelixClient(srv.port) as cl:
        with pytest.raises(M.PeerError, match="not served"):
            cl.setup_inference(D_A, K, "tenseal-dot")
    th.join(timeout=30)
    assert not th.is_alive(), "server did not stop after max_connections"
    assert len(received) >= 9  # HELLO, INFO, FIT_SETUP, FIT_COLUMN, INFER_SETUP, QUERY x 2, HELLO, INFER_SETUP
    ctx = make_context(base.get_backend("seal").client(4, 2).params)
    for msg in received:
        for blob in msg.blobs:
            for sk in secret_windows:
                assert sk[len(sk) // 2 : len(sk) // 2 + 64] not in blob
            parts = base.unpack_blobs(blob)[1] if blob[:4] == b"LAFB" else [blob]
            for p in parts:
                with pytest.raises((RuntimeError, ValueError)):
                    ctx.from_secret_str(p)


@pytest.mark.slow
def test_cli_fit_query_and_server_stops(bundle_path, tmp_path):
    z_b, z_a, v, c = make_data()
    np.save(tmp_path / "pub.npy", z_b[:N_PUBLIC])
    np.save(tmp_path / "q.npy", z_b[N_PUBLIC:])
    proc, port = start_server(bundle_path, tmp_path, "--max_connections=2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "linalign.helix", *a, f"--port={port}"],
                                    cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    r = run("fit", f"--public={tmp_path / 'pub.npy'}", "--lam=0.01", f"--map_out={tmp_path / 'map'}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("query", f"--map={tmp_path / 'map'}", f"--embeddings={tmp_path / 'q.npy'}",
            f"--out={tmp_path / 'scores.npy'}")
    assert r.returncode == 0, r.stderr[-2000:]
    w, b = _plain_map(z_b[:N_PUBLIC], z_a[:N_PUBLIC], 1e-2)
    want = (z_b[N_PUBLIC:] @ np.asarray(w, np.float64) + np.asarray(b, np.float64)) @ v + c
    # Flooding noise of the fit (through W) and of each reply (std < 5e-3, asserted in
    # test_fit_and_query_match_plaintext) is the error; 0.05 is 10 std of the reply flood.
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), want, rtol=0, atol=0.05)
    assert proc.wait(timeout=30) == 0  # stopped by itself after 2 connections
    bad = run("query", "--map=/nonexistent", f"--embeddings={tmp_path / 'q.npy'}", "--out=x.npy")
    assert bad.returncode != 0


def test_slow_frame_times_out_and_server_goes_on(bundle_path, tmp_path):
    import time

    proc, port = start_server(bundle_path, tmp_path, "--frame_timeout=1.5")
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        frame = M.encode(M.MsgType.INFO)
        t0 = time.monotonic()
        try:
            for byte in frame[:-1]:  # trickle, never finish
                s.sendall(bytes([byte]))
                time.sleep(0.3)
        except OSError:
            pass
        reply = M.recv(s)
        assert reply.type == M.MsgType.ERROR and "timed out" in reply.meta["error"]
        assert time.monotonic() - t0 < 10
        s.close()
        with HelixClient(port) as cl:
            assert cl.info()["k"] == K
    finally:
        proc.kill()
        proc.wait(timeout=10)
