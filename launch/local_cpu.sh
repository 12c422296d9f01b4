#!/usr/bin/env bash
# Runs one command as N cooperating JAX processes on this machine, each with M host CPU devices:
# the multi-host code path (coordinator, global mesh over N*M devices, cross-process
# collectives) without a cluster.
#
#   launch/local_cpu.sh [-n PROCESSES] [-m DEVICES_PER_PROCESS] [-l LOG_DIR] [-t TIMEOUT_S] -- CMD...
#
# Example:
#   launch/local_cpu.sh -n 2 -m 4 -- python -m linalign.distributed fit \
#       --source=zb.npy --target=za.npy --out_dir=runs/fit --mesh=data=-1
#
# Each process gets LINALIGN_COORDINATOR=127.0.0.1:<free port>, LINALIGN_NUM_PROCESSES,
# LINALIGN_PROCESS_ID, JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=M.
# Output goes to LOG_DIR/process_<i>.log (printed, prefixed, when all are done) and each
# process's pid to LOG_DIR/process_<i>.pid. If any process
# fails, the others are stopped and the script exits with the failing process's status.
set -uo pipefail

nproc_=2
ndev=4
log_dir=""
timeout_s=0
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while getopts "n:m:l:t:h" opt; do
  case "$opt" in
    n) nproc_="$OPTARG" ;;
    m) ndev="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    t) timeout_s="$OPTARG" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "local_cpu.sh: no command given" >&2; usage; }
[[ "$nproc_" =~ ^[1-9][0-9]*$ && "$ndev" =~ ^[1-9][0-9]*$ ]] || {
  echo "local_cpu.sh: -n and -m must be positive integers (got -n $nproc_ -m $ndev)" >&2; exit 2; }

py="${PYTHON:-python3}"
port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')" || {
  echo "local_cpu.sh: could not find a free port with $py" >&2; exit 2; }
[[ -n "$log_dir" ]] || log_dir="$(mktemp -d -t linalign_local_cpu.XXXXXX)"
mkdir -p "$log_dir"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < nproc_; i++)); do
  LINALIGN_COORDINATOR="127.0.0.1:$port" LINALIGN_NUM_PROCESSES="$nproc_" LINALIGN_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$ndev" \
    "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
  echo "$!" >"$log_dir/process_$i.pid"
done
echo "local_cpu.sh: $nproc_ processes x $ndev CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2

rc=0
failed=""
timed_out=0
watchdog=""
if ((timeout_s > 0)); then
  # wait -n blocks, so a watchdog signals this script when the time is up.
  # Its output goes to /dev/null and it takes its sleep with it when stopped, so nothing is
  # left holding this script's stdout open after it exits.
  (trap 'kill "$sp" 2>/dev/null; exit 0' TERM
   sleep "$timeout_s" & sp=$!
   wait "$sp" && kill -USR1 $$ 2>/dev/null) >/dev/null 2>&1 &
  watchdog=$!
fi
trap 'timed_out=1' USR1
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  done_pid=""
  wait -n -p done_pid "${running[@]}"
  status=$?
  if ((timed_out)); then
    echo "local_cpu.sh: timed out after ${timeout_s}s; stopping all processes" >&2
    stop_all; rc=124; break
  fi
  [[ -n "$done_pid" ]] || continue
  left=()
  for pid in "${running[@]}"; do [[ "$pid" != "$done_pid" ]] && left+=("$pid"); done
  running=("${left[@]}")
  if ((status != 0)); then
    for ((i = 0; i < nproc_; i++)); do [[ "${pids[$i]}" == "$done_pid" ]] && failed=$i; done
    echo "local_cpu.sh: process $failed (pid $done_pid) exited with status $status; stopping the others" >&2
    stop_all
    rc=$status
    break
  fi
done
[[ -n "$watchdog" ]] && kill "$watchdog" 2>/dev/null
wait "${pids[@]}" 2>/dev/null

for ((i = 0; i < nproc_; i++)); do
  sed "s/^/[process $i] /" "$log_dir/process_$i.log"
done
exit "$rc"
