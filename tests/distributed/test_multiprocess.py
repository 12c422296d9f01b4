"""Real multi-process runs: two local processes x four CPU devices through launch/local_cpu.sh,
and a fit killed with SIGKILL mid-stream then resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, brute_force_cv, cli_env, fit_cmd, make_pair, run_cli

LAUNCH = REPO / "launch" / "local_cpu.sh"


def _write_pair(tmp_path, n=1000, d_b=32, d_a=16):
    z_b, z_a = make_pair(n, d_b, d_a, seed=3)
    pb, pa = tmp_path / "zb.npy", tmp_path / "za.npy"
    np.save(pb, z_b)
    np.save(pa, z_a)
    return str(pb), str(pa), z_b, z_a


def _launch(tmp_path, logs, *cmd, n=2, m=2, timeout=300):
    env = cli_env(m)
    env["PYTHON"] = sys.executable
    return ["bash", str(LAUNCH), "-n", str(n), "-m", str(m), "-t", str(timeout), "-l",
            str(tmp_path / logs), "--", *cmd], env


def _report(out):
    return json.loads((out / "report.json").read_text())


def _w(out):
    from safetensors.numpy import load_file
    return load_file(str(out / "map.safetensors"))


@pytest.mark.slow
def test_two_processes_match_single_process_and_brute_force_cv(tmp_path):
    """Float64 per-fold statistics streamed by two processes give the k-fold CV curve of
    refitting on the raw rows of each fold (rtol 1e-6), and the same map as one process."""
    src, tgt, z_b, z_a = _write_pair(tmp_path)
    common = ["--dtype=float64", "--val_fraction=0", "--lam=auto", "--checkpoint_every=3"]
    single = tmp_path / "single"
    run_cli(fit_cmd(src, tgt, single, "--batch_size=64", *common), devices=1)
    multi = tmp_path / "multi"
    cmd, env = _launch(tmp_path, "logs", *fit_cmd(src, tgt, multi, "--batch_size=48", *common))
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "process 0 of 2" in proc.stdout and "process 1 of 2" in proc.stdout
    a, b = _report(single), _report(multi)
    assert b["process_count"] == 2 and b["n_train"] == a["n_train"] == 1000
    want = brute_force_cv(z_b, z_a, b["grid"])
    np.testing.assert_allclose(b["scores"], want, rtol=1e-6)
    np.testing.assert_allclose(b["scores"], a["scores"], rtol=1e-9)
    assert b["lambda"] == pytest.approx(b["grid"][int(np.argmin(want))], rel=1e-12)
    assert b["lambda_selection"] == "kfold-5"
    np.testing.assert_allclose(_w(multi)["W"], _w(single)["W"], rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_launcher_propagates_a_failing_process(tmp_path):
    src, tgt, _, _ = _write_pair(tmp_path, n=100)
    env = cli_env(2)
    env["PYTHON"] = sys.executable
    # Process-local inputs differ in width: the fit must fail on every process, not hang.
    proc = subprocess.run(
        ["bash", str(LAUNCH), "-n", "2", "-m", "2", "-t", "120", "--",
         *fit_cmd(src, str(tmp_path / "missing.npy"), tmp_path / "out")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode not in (0, 124), proc.stderr
    assert "no embeddings at" in proc.stdout and "missing.npy" in proc.stdout


def _manifests(ckpt):
    d = ckpt / "manifests"
    return sorted(int(p.stem) for p in d.glob("*.json")) if d.is_dir() else []


@pytest.mark.slow
def test_sigkill_mid_stream_then_resume_is_bit_identical(tmp_path):
    src, tgt, _, _ = _write_pair(tmp_path, n=1200)
    args = ["--mesh=data=4,model=2", "--batch_size=32", "--checkpoint_every=4"]
    clean = tmp_path / "clean"
    run_cli(fit_cmd(src, tgt, clean, *args))  # 38 steps, uninterrupted

    out = tmp_path / "killed"
    ckpt = tmp_path / "killed.checkpoints"
    proc = subprocess.Popen(fit_cmd(src, tgt, out, *args, "--batch_delay_s=0.15"), env=cli_env(8),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(_manifests(ckpt)) < 2 and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the fit finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc.stderr.close()
    done = _manifests(ckpt)
    assert done and done[-1] < 38 and not (out / "map.safetensors").exists()

    res = run_cli(fit_cmd(src, tgt, out, *args))
    assert f"resumes at step {done[-1]}" in res.stderr or any(
        f"resumes at step {s}" in res.stderr for s in range(done[-1], 38))
    np.testing.assert_array_equal(_w(out)["W"], _w(clean)["W"])
    np.testing.assert_array_equal(_w(out)["b"], _w(clean)["b"])
    assert _report(out)["scores"] == _report(clean)["scores"]


@pytest.mark.slow
def test_two_process_fit_survives_sigkill_of_one_process(tmp_path):
    """One of two processes is SIGKILLed: the launcher stops the other and fails; the same
    command started again resumes both from the last complete checkpoint, bit-identically."""
    src, tgt, _, _ = _write_pair(tmp_path)
    env = cli_env(4)
    env["PYTHON"] = sys.executable
    args = ["--batch_size=16", "--mesh=data=2,model=2", "--checkpoint_every=4"]

    def launch(out, logs, *extra):
        return ["bash", str(LAUNCH), "-n", "2", "-m", "4", "-t", "300", "-l", str(tmp_path / logs),
                "--", *fit_cmd(src, tgt, tmp_path / out, *args, *extra)]

    clean = subprocess.run(launch("clean", "lc"), env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=360)
    assert clean.returncode == 0, clean.stdout[-3000:]
    run = subprocess.Popen(launch("killed", "lk", "--batch_delay_s=0.2"), env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(_manifests(tmp_path / "killed.checkpoints")) < 2:
        assert run.poll() is None, "the launcher ended before a checkpoint was written"
        time.sleep(0.1)
    os.kill(int((tmp_path / "lk" / "process_1.pid").read_text()), signal.SIGKILL)
    assert run.wait(timeout=120) == 128 + signal.SIGKILL  # the launcher reports the killed process
    done = _manifests(tmp_path / "killed.checkpoints")
    assert done[-1] < 32 and not (tmp_path / "killed" / "map.safetensors").exists()

    again = subprocess.run(launch("killed", "lr"), env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=360)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "process 1 resumes at step" in again.stdout
    np.testing.assert_array_equal(_w(tmp_path / "killed")["W"], _w(tmp_path / "clean")["W"])
