"""HELIX across organisations: TLS, authentication, budgets, slow and hostile clients, overflow,
the fit state machine on the wire, and destructive CLI paths."""

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import D_A, D_B, K, N_PUBLIC, REPO, make_data
from linalign.atomic import atomic_write, atomic_write_json
from linalign.fhe import base
from linalign.helix import messages as M
from linalign.helix import security as S
from linalign.helix.client import HelixClient
from linalign.helix.server import Bundle, Server, ServerConfig

pytestmark = pytest.mark.fhe


@pytest.fixture(scope="module")
def bundle():
    z_b, z_a, v, c = make_data()
    return Bundle(v, c, z_a[:N_PUBLIC], {"public_fingerprint": "synthetic-0"})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from linalign.helix.certs import make_ca, make_cert

    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    rogue = make_ca(d, "rogue-ca")
    secret = os.urandom(32)
    atomic_write_json(d / "secrets.json", {"org-b": secret.hex()})
    return {
        "dir": d, "ca": ca, "server": make_cert(d, "server", ca, "localhost", server=True),
        "client": make_cert(d, "client-a", ca, "client-a"), "rogue_client": make_cert(d, "mallory", rogue, "mallory"),
        "rogue_ca": rogue, "secrets": str(d / "secrets.json"), "secret": secret,
    }


@contextlib.contextmanager
def running(bundle, **cfg):
    srv = Server(bundle, ServerConfig(**cfg))
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield srv
    finally:
        srv.stop()
        th.join(timeout=30)


def _x():
    return np.linspace(-0.5, 0.5, D_A)[None]


def _check_query(cl):
    _, _, v, c = make_data()
    cl.setup_inference(D_A, K, "seal")
    std = cl.announced["flood_std"] / cl.announced["head_scale"]
    np.testing.assert_allclose(cl.query(_x()), _x() @ v + c, rtol=0, atol=6 * std)


def test_tls_and_shared_secret(bundle, pki):
    tls = dict(tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key), secrets_file=pki["secrets"])
    with running(bundle, **tls) as srv:
        with HelixClient(srv.port, tls_ca=str(pki["ca"].cert), client_id="org-b", secret=pki["secret"]) as cl:
            assert cl.identity == "id:org-b"
            _check_query(cl)
        with pytest.raises(M.PeerError, match="authentication failed"):
            HelixClient(srv.port, tls_ca=str(pki["ca"].cert), client_id="org-b", secret=os.urandom(32))
        with pytest.raises(M.PeerError, match="authentication failed"):
            HelixClient(srv.port, tls_ca=str(pki["ca"].cert), client_id="nobody", secret=pki["secret"])
        with pytest.raises(S.AuthError, match="requires a shared secret"):
            HelixClient(srv.port, tls_ca=str(pki["ca"].cert), client_id="org-b")
        with pytest.raises(ssl.SSLCertVerificationError):  # a provider certificate from another CA
            HelixClient(srv.port, tls_ca=str(pki["rogue_ca"].cert), client_id="org-b", secret=pki["secret"])
        with pytest.raises((M.ProtocolError, OSError)):  # plaintext client against a TLS server
            HelixClient(srv.port, client_id="org-b", secret=pki["secret"], timeout_s=5)


def test_mutual_tls(bundle, pki):
    tls = dict(tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key), tls_client_ca=str(pki["ca"].cert))
    with running(bundle, **tls) as srv:
        good = dict(tls_ca=str(pki["ca"].cert), tls_cert=str(pki["client"].cert), tls_key=str(pki["client"].key))
        with HelixClient(srv.port, **good) as cl:
            assert cl.identity == "cert:client-a"
            assert cl.info()["k"] == K
        for bad in (dict(tls_cert=str(pki["rogue_client"].cert), tls_key=str(pki["rogue_client"].key)), {}):
            with pytest.raises((OSError, M.ProtocolError)):  # the handshake fails, or the server drops us
                with HelixClient(srv.port, tls_ca=str(pki["ca"].cert), timeout_s=10, **bad) as cl:
                    cl.info()


def test_non_loopback_needs_tls_and_auth(bundle, pki):
    with pytest.raises(ValueError, match="TLS is required"):
        Server(bundle, ServerConfig(host="0.0.0.0"))
    with pytest.raises(ValueError, match="authentication is required"):
        Server(bundle, ServerConfig(host="0.0.0.0", tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)))
    with pytest.raises(ValueError, match="TLS is required"):
        HelixClient(7700, host="192.0.2.1")  # refused before any connection attempt


def test_budget_and_request_log(bundle, tmp_path):
    log = tmp_path / "requests.jsonl"
    with running(bundle, query_budget=3, request_log=str(log)) as srv:
        with HelixClient(srv.port) as cl:
            cl.setup_inference(D_A, K, "seal")
            cl.query(np.repeat(_x(), 3, axis=0))
            with pytest.raises(M.PeerError, match="query budget of 3"):
                cl.query(_x())
        with HelixClient(srv.port) as cl:  # the budget belongs to the identity, not the connection
            cl.setup_inference(D_A, K, "seal")
            with pytest.raises(M.PeerError, match="budget"):
                cl.query(_x())
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    types = [r["type"] for r in lines]
    assert types.count("QUERY") == 5 and "INFER_SETUP" in types and "HELLO" in types
    assert sum(r["status"].startswith("error") for r in lines) == 2
    assert all(r["identity"] == "127.0.0.1" for r in lines if r["type"] == "QUERY")


def test_batched_queries_spend_the_budget_per_query(bundle):
    # Two queries per ciphertext: one QUERY message spends two queries of the budget, so
    # batching cannot stretch it; the batched scores equal the single ones.
    x = np.vstack([_x(), -_x(), 0.5 * _x()])
    with running(bundle, query_budget=4) as srv:
        with HelixClient(srv.port) as cl:
            cl.setup_inference(D_A, K, "seal")
            single = cl.query(x)
        with HelixClient(srv.port) as cl:
            cl.setup_inference(D_A, K, "seal", batch=2)
            assert cl.info()["budget_left"]["query"] == 1
    with running(bundle, query_budget=4) as srv:
        with HelixClient(srv.port) as cl:
            cl.setup_inference(D_A, K, "seal", batch=2)
            got = cl.query(x)  # two messages: [x0, x1] and [x2]: four queries spent
            np.testing.assert_allclose(got, single, rtol=0, atol=1e-3)
            assert cl.stats.queries == 3
            with pytest.raises(M.PeerError, match="query budget of 4"):
                cl.query(x[:1])


def test_slow_and_hostile_clients_do_not_delay_a_valid_one(bundle):
    """8 idle sockets, a byte-trickling client and a chatty client: a valid client's setup and
    queries each stay under the stated bound (one job ahead per worker: here 2 s)."""
    stop = threading.Event()
    with running(bundle, workers=2, idle_timeout_s=4.0, frame_timeout_s=4.0, max_per_peer=32) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(8)]

        def trickle():
            s = socket.create_connection(("127.0.0.1", srv.port))
            frame = M.encode(M.MsgType.HELLO, {"client_id": "slow", "nonce": "00" * 32})
            with contextlib.suppress(OSError):
                for byte in frame:
                    if stop.is_set():
                        break
                    s.sendall(bytes([byte]))
                    time.sleep(0.2)
            s.close()

        def chatty():
            with HelixClient(srv.port, client_id="chatty") as cl:
                while not stop.is_set():
                    cl.info()
                    time.sleep(0.01)

        threads = [threading.Thread(target=f, daemon=True) for f in (trickle, chatty)]
        for th in threads:
            th.start()
        time.sleep(0.5)
        try:
            t0 = time.monotonic()
            with HelixClient(srv.port) as cl:
                cl.setup_inference(D_A, K, "seal")
                setup_s = time.monotonic() - t0
                lat = []
                for _ in range(5):
                    t1 = time.monotonic()
                    cl.query(_x())
                    lat.append(time.monotonic() - t1)
            assert setup_s < 10.0, setup_s  # includes key generation and the one-off calibration
            assert max(lat) < 2.0, lat
            # Idle sockets are closed by the server after idle_timeout_s, with an ERROR frame.
            idle[0].settimeout(10)
            reply = M.recv(idle[0])
            assert reply.type == M.MsgType.ERROR and "timed out" in reply.meta["error"]
        finally:
            stop.set()
            for s in idle:
                s.close()


def test_per_peer_cap(bundle):
    with running(bundle, max_per_peer=3) as srv:
        held = [HelixClient(srv.port) for _ in range(3)]
        with pytest.raises((OSError, M.ProtocolError)):
            HelixClient(srv.port, timeout_s=5)
        held[0].close()
        time.sleep(0.2)
        with HelixClient(srv.port) as cl:
            assert cl.info()["d"] == D_A
        for h in held[1:]:
            h.close()


def _raw_session(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    M.send(s, M.MsgType.HELLO, {"client_id": "raw", "nonce": "ab" * 32})
    assert M.recv(s).type == M.MsgType.READY
    return s


def test_fit_state_machine_on_the_wire(bundle):
    from linalign.fhe.fitting import FitClient

    z_b, *_ = make_data()
    with running(bundle) as srv:
        fc = FitClient(z_b[:N_PUBLIC], D_A)
        for bad in ("out of range", "already answered", "second FIT_SETUP", "surplus"):
            s = _raw_session(srv.port)
            M.send(s, M.MsgType.FIT_SETUP, {}, [fc.public_context()])
            ready = M.recv(s)
            assert ready.type == M.MsgType.READY and ready.meta["columns"] == D_B + 1
            if bad == "out of range":
                meta, blobs = base.unpack_blobs(fc.encrypt_column(0))
                M.send(s, M.MsgType.FIT_COLUMN, {}, [base.pack_blobs({**meta, "j": D_B + 1}, blobs)])
            elif bad == "already answered":
                for _ in range(2):
                    M.send(s, M.MsgType.FIT_COLUMN, {}, [fc.encrypt_column(3)])
                assert M.recv(s).type == M.MsgType.FIT_RESULT
            elif bad == "second FIT_SETUP":
                M.send(s, M.MsgType.FIT_SETUP, {}, [fc.public_context()])
            else:
                for j in range(D_B + 1):
                    M.send(s, M.MsgType.FIT_COLUMN, {}, [fc.encrypt_column(j)])
                    assert M.recv(s).type == M.MsgType.FIT_RESULT
                M.send(s, M.MsgType.FIT_COLUMN, {}, [fc.encrypt_column(0)])
            err = M.recv(s)
            assert err.type == M.MsgType.ERROR, bad
            want = {"surplus": "already answered", "second FIT_SETUP": "one fit per connection"}.get(bad, bad)
            assert want in err.meta["error"], (bad, err.meta)
            assert M.recv(s, allow_eof=True) is None  # and the session is closed
            s.close()


def test_overflow_refused(bundle):
    with running(bundle) as srv:
        with HelixClient(srv.port) as cl:
            with pytest.raises(M.PeerError, match="cannot carry circuit-private"):
                cl.setup_inference(D_A, K, "seal", "n4096")
        with HelixClient(srv.port) as cl:
            cl.setup_inference(D_A, K, "seal")
            big = np.full((1, D_A), 1e6)
            with pytest.raises(base.FHEError, match="input bound"):
                cl.query(big)
            with pytest.raises(base.FHEError, match="input bound"):
                cl.query(np.full((1, D_A), np.nan))
            cl._announced["score_bound"] = 1e-3  # a reply larger than the bound allows
            with pytest.raises(base.FHEError, match="exceeds the possible"):
                cl.query(_x())


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "linalign.helix", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_map_out_never_destroys(tmp_path):
    z_b, *_ = make_data()
    np.save(tmp_path / "pub.npy", z_b[:N_PUBLIC])
    unrelated = tmp_path / "thesis"
    unrelated.mkdir()
    atomic_write(unrelated / "chapter1.tex", "precious")
    note = tmp_path / "notes.txt"
    atomic_write(note, "also precious")
    cases = [(unrelated, [], "existing directory"), (unrelated, ["--overwrite"], "existing directory"),
             (note, [], "pass --overwrite"), (note, ["--overwrite"], "is not a map")]
    for target, extra, msg in cases:
        r = _cli("fit", "--port=9", f"--public={tmp_path / 'pub.npy'}", f"--map_out={target}", *extra)
        assert r.returncode != 0 and msg in r.stderr, (target, extra, r.stderr[-800:])
    assert (unrelated / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in unrelated.iterdir()) == ["chapter1.tex"]
    assert note.read_text() == "also precious"
