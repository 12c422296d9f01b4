"""launch/slurm_gpu.sh through JAX's real SLURM detector on one machine, and the command line
launch/tpu_pod.sh hands to gcloud (no TPU here, so gcloud is replaced by a recorder)."""

import os
import stat
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env, make_pair, reference_stats

# Stand-in for srun on one machine: starts SLURM_NTASKS copies of the command with the per-task
# variables srun sets; everything after that (slurm_gpu.sh, jax's SlurmCluster) is the real code.
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "${1:-}" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" >"$SRUN_LOG_DIR/task_$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$@" >> "$GCLOUD_LOG"
printf -- '----\\n' >> "$GCLOUD_LOG"
"""


def _exe(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.slow
def test_slurm_script_joins_tasks_through_jax_slurm_detector(tmp_path):
    import subprocess
    z_b, z_a = make_pair(400, 16, 8, seed=7)
    np.save(tmp_path / "zb.npy", z_b)
    np.save(tmp_path / "za.npy", z_a)
    (tmp_path / "bin").mkdir()
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    _exe(tmp_path / "bin" / "srun", FAKE_SRUN)
    _exe(tmp_path / "venv" / "bin" / "python", f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')
    env = cli_env(4)
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}", SRUN_LOG_DIR=str(tmp_path / "logs"),
               SLURM_JOB_ID=str(1000 + os.getpid() % 3000), SLURM_NTASKS="2",
               SLURM_STEP_NODELIST="localhost", SLURM_JOB_NUM_NODES="1",
               LINALIGN_VENV=str(tmp_path / "venv"), SLURM_SUBMIT_DIR=str(REPO))
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm_gpu.sh"), "fit", f"--source={tmp_path / 'zb.npy'}",
         f"--target={tmp_path / 'za.npy'}", f"--out_dir={out}", "--batch_size=32",
         "--mesh=data=2,model=2", "--lam=1e-1", "--val_fraction=0", "--verbose"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    logs = "".join((tmp_path / "logs" / f"task_{i}.log").read_text() for i in range(2))
    assert proc.returncode == 0, proc.stderr + logs[-3000:]
    assert "runtime slurm: process 0 of 2, 4 local / 8 global devices" in logs
    assert "runtime slurm: process 1 of 2, 4 local / 8 global devices" in logs
    from linalign.align.affine_map import AffineMap

    got, ref = AffineMap.load(out), reference_stats(z_b, z_a)
    assert got.metadata.n == 400 and got.metadata.extra["process_count"] == 2
    w = np.linalg.solve(ref["c_bb"] + 1e-1 * np.eye(16), ref["c_ba"])
    np.testing.assert_allclose(np.asarray(got.w), w, rtol=1e-4, atol=1e-5)


def test_tpu_pod_script_runs_the_same_command_on_every_worker(tmp_path):
    import subprocess
    (tmp_path / "bin").mkdir()
    _exe(tmp_path / "bin" / "gcloud", RECORDER)
    log = tmp_path / "gcloud.log"
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               GCLOUD_LOG=str(log), TPU_NAME="pod-1", ZONE="zone-a")
    proc = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "run", "fit",
                           "--source=/data/my file.npy", "--lam=1e-2"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().split("\n----\n")[0].split("\n")
    assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "pod-1", "--worker=all"]
    command = next(a for a in args if a.startswith("--command="))
    assert "LINALIGN_CLUSTER=tpu .venv/bin/python -m linalign.distributed fit" in command
    assert r"--source=/data/my\ file.npy" in command  # quoted for the remote shell
    missing = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "run", "fit"],
                             env={**env, "TPU_NAME": ""}, capture_output=True, text=True)
    assert missing.returncode != 0 and "TPU_NAME" in missing.stderr
