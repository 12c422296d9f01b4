"""Fixtures for the scale-out tests: paired synthetic embeddings on disk and a CLI runner."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def make_pair(n: int, d_b: int, d_a: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated [n, d_b] / [n, d_a] float32 rows with means far from zero (tests centring)."""
    rng = np.random.default_rng(seed)
    z_b = rng.normal(size=(n, d_b)) * rng.uniform(0.5, 2.0, size=d_b) + 3.0
    z_a = z_b @ rng.normal(size=(d_b, d_a)) / np.sqrt(d_b) + 0.1 * rng.normal(size=(n, d_a)) - 2.0
    return z_b.astype(np.float32), z_a.astype(np.float32)


def reference_stats(z_b: np.ndarray, z_a: np.ndarray) -> dict:
    """Float64 centred moments of whole arrays."""
    x = z_b.astype(np.float64)
    y = z_a.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    return {"n": len(x), "mean_b": x.mean(0), "mean_a": y.mean(0), "c_bb": xc.T @ xc,
            "c_ba": xc.T @ yc, "ss_a": (yc * yc).sum(0)}


@pytest.fixture
def pair_files(tmp_path):
    """(source .npy path, target .npy path, z_b, z_a) with 600 rows, d_b=16, d_a=8."""
    z_b, z_a = make_pair(600, 16, 8)
    pb, pa = tmp_path / "zb.npy", tmp_path / "za.npy"
    np.save(pb, z_b)
    np.save(pa, z_a)
    return str(pb), str(pa), z_b, z_a


def cli_env(devices: int = 8) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    for k in ("LINALIGN_COORDINATOR", "LINALIGN_NUM_PROCESSES", "LINALIGN_PROCESS_ID", "LINALIGN_CLUSTER"):
        env.pop(k, None)
    return env


def fit_cmd(src: str, tgt: str, out_dir, *extra: str) -> list[str]:
    # --verbose: the tests read the runtime's and the resume's log lines (quiet by default).
    return [sys.executable, "-m", "linalign.distributed", "fit", f"--source={src}",
            f"--target={tgt}", f"--out_dir={out_dir}", "--verbose", *extra]


def run_cli(cmd, devices: int = 8, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=cli_env(devices), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def brute_force_cv(z_b: np.ndarray, z_a: np.ndarray, grid, k: int = 5, seed: int = 0) -> np.ndarray:
    """[L] summed held-out squared error of k-fold CV, refitting on the raw rows of each fold.

    Folds are ``fold_of`` the row index (what the streaming fit uses); every fit is a float64
    centred ridge solve from the rows themselves, not from any statistics.
    """
    from linalign.align.lambdas import fold_of

    x, y = z_b.astype(np.float64), z_a.astype(np.float64)
    fold = fold_of(np.arange(len(x)), k, seed)
    out = np.zeros(len(grid))
    for j in range(k):
        tr, te = fold != j, fold == j
        mx, my = x[tr].mean(0), y[tr].mean(0)
        xc, yc = x[tr] - mx, y[tr] - my
        for i, lam in enumerate(grid):
            w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
            out[i] += np.sum((x[te] @ w + (my - mx @ w) - y[te]) ** 2)
    return out
