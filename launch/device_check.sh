#!/usr/bin/env bash
# The device check: linalign on one accelerator against transformers on the same device.
#
#   bash launch/device_check.sh OUT_DIR [flags for experiments/device_check.py]
#   bash launch/device_check.sh OUT_DIR --small        # CPU, tiny configs (what the tests run)
#
# Made for a GPU machine with no network whose Python already holds jax (CUDA), numpy 2,
# flax, optax, orbax-checkpoint, transformers, tokenizers, safetensors, torch, absl-py, tqdm,
# matplotlib and scikit-learn. Nothing is installed or downloaded: the checkpoints are built on
# the device from config dicts with random weights. Writes OUT_DIR/device_check.{json,md}
# after every stage, so a run cut short keeps what finished. Full mode stays within 8 minutes
# (stages past --budget_s, 420 s by default, are skipped; the hard stop below is 470 s).
# The output format is described in BUILD_NOTES.md ("Device check").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: bash launch/device_check.sh OUT_DIR [flags]}"
shift
py="${PYTHON:-python3}"
# JAX preallocates 75% of GPU memory by default; torch runs in the same process and needs room.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec timeout --signal=TERM --kill-after=10 "${LINALIGN_CHECK_TIMEOUT_S:-470}" \
  "$py" "$here/experiments/device_check.py" --out_dir="$out" "$@"
