#!/usr/bin/env bash
# Cloud TPU pod slice: copy the repository to every worker, set it up, and run the same command
# on all of them at once (JAX's multi-controller model: one process per TPU VM host, each
# driving its local chips; jax.distributed.initialize() finds the others through the TPU
# metadata).
#
#   TPU_NAME=my-v5e-256 ZONE=us-west4-a launch/tpu_pod.sh setup
#   TPU_NAME=my-v5e-256 ZONE=us-west4-a launch/tpu_pod.sh run fit \
#       --source=/data/zb.npy --target=/data/za.npy --out_dir=/data/runs/fit \
#       --checkpoint_dir=gs://my-bucket/linalign/fit1 --checkpoint_every=200 --batch_size=8192
#
# Optional: PROJECT (gcloud project), REMOTE_DIR (default linalign, under each worker's home).
# Inputs must exist at the same path on every worker (copy them, or use a mounted filesystem);
# the checkpoint directory must be shared, e.g. a gs:// bucket (orbax writes it from all hosts);
# --out_dir is written by worker 0.
set -euo pipefail
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -gt 0 ]] || usage
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
remote="${REMOTE_DIR:-linalign}"
gc=(gcloud compute tpus tpu-vm)
where=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project "$PROJECT")
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

cmd="$1"; shift
case "$cmd" in
  setup)
    tarball="$(mktemp -t linalign_src.XXXXXX.tar.gz)"
    git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
    "${gc[@]}" scp "$tarball" "$TPU_NAME:linalign_src.tar.gz" --worker=all "${where[@]}"
    "${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="set -e
      mkdir -p $remote && tar -xzf linalign_src.tar.gz -C $remote && cd $remote
      python3 -m venv .venv
      .venv/bin/pip install -q -e . 'jax[tpu]'"
    rm -f "$tarball" ;;
  run)
    [[ $# -gt 0 ]] || usage
    args="$(printf '%q ' "$@")"
    # LINALIGN_CLUSTER=tpu: initialize through JAX's Cloud TPU detector on every worker.
    "${gc[@]}" ssh "$TPU_NAME" --worker=all "${where[@]}" --command="cd $remote && \
      LINALIGN_CLUSTER=tpu .venv/bin/python -m linalign.distributed $args" ;;
  *) usage ;;
esac
