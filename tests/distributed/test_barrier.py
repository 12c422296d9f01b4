"""The processes' synchronisation points wait for slow peers (runtime.barrier).

An extraction's processes finish their shares minutes apart (texts differ in length). The
device-collective sync used before (``multihost_utils.sync_global_devices``) initialises the
CPU collectives with a fixed 30 s deadline, so the first process to finish died at the final
sync; this ran a real two-process job with one process 40 s behind the other."""

import subprocess
import sys

import pytest

from conftest import REPO, cli_env

LAUNCH = REPO / "launch" / "local_cpu.sh"

SCRIPT = """
import sys, time
import jax
from linalign.distributed import runtime
runtime.initialize()
delay, timeout = float(sys.argv[1]), float(sys.argv[2])
if jax.process_index() == 1:
    time.sleep(delay)
t0 = time.time()
runtime.barrier("test_barrier", timeout_s=timeout)
print(f"process {jax.process_index()} passed after {time.time() - t0:.1f} s", flush=True)
"""


def _run(tmp_path, delay, timeout):
    env = cli_env(1)
    env["PYTHON"] = sys.executable
    script = tmp_path / "barrier_job.py"
    script.write_text(SCRIPT)
    cmd = ["bash", str(LAUNCH), "-n", "2", "-m", "1", "-t", "300", "-l", str(tmp_path / "logs"),
           "--", sys.executable, str(script), str(delay), str(timeout)]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=360)


@pytest.mark.slow
def test_barrier_waits_for_a_process_40s_behind(tmp_path):
    proc = _run(tmp_path, delay=40, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    waited = [float(line.split("after ")[1].split(" s")[0])
              for line in proc.stdout.splitlines() if "process 0 passed" in line]
    assert waited and waited[0] >= 35.0, proc.stdout[-2000:]
    assert "process 1 passed" in proc.stdout


@pytest.mark.slow
def test_barrier_timeout_names_the_barrier(tmp_path):
    proc = _run(tmp_path, delay=10, timeout=3)  # process 1 arrives well after the 3 s limit
    assert proc.returncode != 0
    assert "barrier 'test_barrier' not reached by every process within 3 s" in proc.stdout + proc.stderr


FAIL_SCRIPT = """
import sys
import jax
from linalign import cli
from linalign.distributed import runtime
runtime.initialize()

def program():
    if jax.process_index() == 1:
        if sys.argv[1] == "raise":
            raise RuntimeError("process 1 broke")
        print("process 1: error: a user mistake", file=sys.stderr)
        return 2
    runtime.barrier("wait_for_the_failed_one", timeout_s=250)
    return 0

cli._exit(program)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how,status", [("return", 2), ("raise", 1)])
def test_a_process_that_fails_alone_ends_the_job_at_once(tmp_path, how, status):
    """One process fails while the other waits at a barrier for it. Before, the failed process
    waited at JAX's shutdown barrier and the healthy one at its own, so the job hung until the
    launcher's timeout (seen in a two-process extraction that lost a cache race)."""
    import time

    env = cli_env(1)
    env["PYTHON"] = sys.executable
    script = tmp_path / "fail_job.py"
    script.write_text(FAIL_SCRIPT)
    t0 = time.time()
    proc = subprocess.run(["bash", str(LAUNCH), "-n", "2", "-m", "1", "-t", "280", "--",
                           sys.executable, str(script), how],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, out[-3000:]
    assert took < 60, f"took {took:.0f} s: {out[-2000:]}"
    assert "process 1 (pid" in out and f"exited with status {status}" in out
    assert ("process 1 broke" in out) == (how == "raise")
    assert "process 1 of 2 failed" in out
