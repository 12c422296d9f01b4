"""A real HELIX provider subprocess on 127.0.0.1 for the protocol tests."""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

D_B, D_A, K, N_PUBLIC = 16, 24, 3, 300


def make_data(seed=0):
    """Synthetic paired embeddings with a real linear relation plus noise, and a head on A."""
    rng = np.random.default_rng(seed)
    z_b = rng.standard_normal((N_PUBLIC + 50, D_B)) / np.sqrt(D_B) + 0.1
    t = rng.standard_normal((D_B, D_A)) / np.sqrt(D_B)
    z_a = z_b @ t + 0.05 * rng.standard_normal((z_b.shape[0], D_A)) / np.sqrt(D_A) - 0.2
    v = rng.standard_normal((D_A, K)) * 2
    c = rng.standard_normal(K)
    return z_b, z_a, v, c


@pytest.fixture
def bundle_path(tmp_path):
    from linalign.helix.server import Bundle, save_bundle

    z_b, z_a, v, c = make_data()
    return save_bundle(tmp_path / "provider.npz",
                       Bundle(v, c, z_a[:N_PUBLIC], {"public_fingerprint": "synthetic-0"}))


def start_server(bundle_path, tmp_path, *extra):
    port_file = tmp_path / f"port{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "linalign.helix", "serve", "--port=0", f"--port_file={port_file}",
         f"--head={bundle_path}", "--max_seconds=120", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start within 60 s")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


@pytest.fixture
def server(bundle_path, tmp_path):
    proc, port = start_server(bundle_path, tmp_path, "--idle_timeout=60", "--frame_timeout=60", "--max_message_mb=64")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
