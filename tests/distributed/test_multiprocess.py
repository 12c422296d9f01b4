"""Real multi-process runs: two local processes x four CPU devices through launch/local_cpu.sh,
and a fit killed with SIGKILL mid-stream then resumed."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, cli_env, fit_cmd, load_npz, make_pair, reference_stats, run_cli

LAUNCH = REPO / "launch" / "local_cpu.sh"


def _write_pair(tmp_path, n=1000, d_b=32, d_a=16):
    z_b, z_a = make_pair(n, d_b, d_a, seed=3)
    pb, pa = tmp_path / "zb.npy", tmp_path / "za.npy"
    np.save(pb, z_b)
    np.save(pa, z_a)
    return str(pb), str(pa), z_b, z_a


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    src, tgt, z_b, z_a = _write_pair(tmp_path)
    common = ["--mesh=data=4,model=2", "--checkpoint_every=3", "--lam=1e-2"]
    single = tmp_path / "single"
    run_cli(fit_cmd(src, tgt, single, "--batch_size=64", *common), devices=8)
    multi = tmp_path / "multi"
    env = cli_env(4)
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", str(LAUNCH), "-n", "2", "-m", "4", "-t", "300", "-l", str(tmp_path / "logs"), "--",
         *fit_cmd(src, tgt, multi, "--batch_size=32", *common)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # Both processes took part: each wrote its reader position into the last checkpoint.
    assert "process 0 of 2" in proc.stdout and "process 1 of 2" in proc.stdout
    a, b = load_npz(single / "stats.npz"), load_npz(multi / "stats.npz")
    assert int(a["n"]) == int(b["n"]) == 1000
    # Same rows, different partition into per-device partial sums: float32 rounding only.
    for k in ("mean_b", "mean_a", "c_bb", "c_ba", "ss_a"):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-4, err_msg=k)
    ref = reference_stats(z_b, z_a)
    np.testing.assert_allclose(b["c_ba"], ref["c_ba"], rtol=2e-5, atol=2e-4)
    ma, mb = load_npz(single / "map.npz"), load_npz(multi / "map.npz")
    np.testing.assert_allclose(mb["W"], ma["W"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mb["b"], ma["b"], rtol=1e-4, atol=1e-4)
    w_ref = np.linalg.solve(ref["c_bb"] + 1e-2 * np.eye(32), ref["c_ba"])
    np.testing.assert_allclose(mb["W"], w_ref, rtol=1e-3, atol=1e-4)


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
    assert "does not exist" in proc.stdout


def _manifests(ckpt):
    d = ckpt / "manifests"
    return sorted(int(p.stem) for p in d.glob("*.json")) if d.is_dir() else []


@pytest.mark.slow
def test_sigkill_mid_stream_then_resume_is_bit_identical(tmp_path):
    src, tgt, _, _ = _write_pair(tmp_path, n=1200)
    args = ["--mesh=data=4,model=2", "--batch_size=32", "--checkpoint_every=4", "--lam=1e-2"]
    clean = tmp_path / "clean"
    run_cli(fit_cmd(src, tgt, clean, *args))  # 38 steps, uninterrupted

    out = tmp_path / "killed"
    ckpt = out / "checkpoints"
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
    assert done and done[-1] < 38 and not (out / "stats.npz").exists()

    res = run_cli(fit_cmd(src, tgt, out, *args))
    assert f"resumes at step {done[-1]}" in res.stderr or any(
        f"resumes at step {s}" in res.stderr for s in range(done[-1], 38))
    a, b = load_npz(clean / "stats.npz"), load_npz(out / "stats.npz")
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    ma, mb = load_npz(clean / "map.npz"), load_npz(out / "map.npz")
    np.testing.assert_array_equal(mb["W"], ma["W"])


@pytest.mark.slow
def test_two_process_fit_survives_sigkill_of_one_process(tmp_path):
    """One of two processes is SIGKILLed: the launcher stops the other and fails; the same
    command started again resumes both from the last complete checkpoint, bit-identically."""
    src, tgt, _, _ = _write_pair(tmp_path)
    env = cli_env(4)
    env["PYTHON"] = sys.executable
    args = ["--batch_size=16", "--mesh=data=4,model=2", "--checkpoint_every=4"]

    def launch(out, logs, *extra):
        return ["bash", str(LAUNCH), "-n", "2", "-m", "4", "-t", "300", "-l", str(tmp_path / logs),
                "--", *fit_cmd(src, tgt, tmp_path / out, *args, *extra)]

    clean = subprocess.run(launch("clean", "lc"), env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=360)
    assert clean.returncode == 0, clean.stdout[-3000:]
    run = subprocess.Popen(launch("killed", "lk", "--batch_delay_s=0.2"), env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(_manifests(tmp_path / "killed" / "checkpoints")) < 2:
        assert run.poll() is None, "the launcher ended before a checkpoint was written"
        time.sleep(0.1)
    os.kill(int((tmp_path / "lk" / "process_1.pid").read_text()), signal.SIGKILL)
    assert run.wait(timeout=120) == 128 + signal.SIGKILL  # the launcher reports the killed process
    done = _manifests(tmp_path / "killed" / "checkpoints")
    assert done[-1] < 32 and not (tmp_path / "killed" / "stats.npz").exists()

    again = subprocess.run(launch("killed", "lr"), env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=360)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "process 1 resumes at step" in again.stdout
    a, b = load_npz(tmp_path / "clean" / "stats.npz"), load_npz(tmp_path / "killed" / "stats.npz")
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
