#!/usr/bin/env bash
#SBATCH --job-name=linalign
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#
# Multi-node GPU job: the same linalign command in every task, joined through JAX's own SLURM
# detector (coordinator = first node of the step, port derived from the job id).
#
#   sbatch launch/slurm_gpu.sh fit --source=/shared/zb.npy --target=/shared/za.npy \
#       --out_dir=/shared/runs/fit --checkpoint_every=200 --batch_size=4096 --mesh=data=-1
#
# One process per GPU (default, the #SBATCH lines above): every task sees all GPUs of its node
# and JAX picks GPU number SLURM_LOCALID. Do not bind GPUs per task (--gpus-per-task /
# --gpu-bind), which would renumber the one visible GPU to 0.
# One process per node: LINALIGN_SLURM_MODE=per-node sbatch --ntasks-per-node=1 launch/slurm_gpu.sh ...
#   (each process then drives all of its node's GPUs).
#
# Environment: a venv on a filesystem every node mounts, made once with the core package only
# (GPU nodes need neither torch nor the FHE libraries; Python >= 3.11, current jax):
#   python3.12 -m venv .venv && .venv/bin/pip install -e . "jax[cuda13]"   # or jax[cuda12]
# and pointed to by LINALIGN_VENV (default: .venv next to this script's repository). Inputs,
# --out_dir and the checkpoint directory must be on that shared filesystem too.
set -euo pipefail
[[ $# -gt 0 ]] || { sed -n '10,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ -n "${SLURM_JOB_ID:-}" ]] || { echo "slurm_gpu.sh: submit it with sbatch (no SLURM_JOB_ID)" >&2; exit 2; }
repo="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
venv="${LINALIGN_VENV:-$repo/.venv}"
mode="${LINALIGN_SLURM_MODE:-per-gpu}"
[[ -x "$venv/bin/python" ]] || { echo "slurm_gpu.sh: no venv at $venv (set LINALIGN_VENV)" >&2; exit 2; }

extra=(--cluster=slurm)
case "$mode" in
  per-gpu) ;;  # JAX sets local_device_ids=[SLURM_LOCALID]
  per-node)
    gpus="${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}"
    extra+=("--local_device_ids=$(seq -s, 0 $((gpus - 1)))") ;;
  *) echo "slurm_gpu.sh: LINALIGN_SLURM_MODE must be per-gpu or per-node, got $mode" >&2; exit 2 ;;
esac

echo "slurm_gpu.sh: job $SLURM_JOB_ID, $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES nodes ($mode)" >&2
cd "$repo"
# --kill-on-bad-exit: one failed task ends the step instead of leaving the rest blocked in a
# collective; the fit then resumes from its last checkpoint when resubmitted.
exec srun --kill-on-bad-exit=1 --cpu-bind=none \
  "$venv/bin/python" -m linalign.distributed "$@" "${extra[@]}"
