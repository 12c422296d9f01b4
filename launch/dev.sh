#!/usr/bin/env bash
# Sets up a local environment (once) and runs a linalign job on this machine.
#
#   bash launch/dev.sh demo          # the main job on the bundled real models
#   bash launch/dev.sh test          # the whole test suite (real-model tests included)
#   bash launch/dev.sh test-fast     # skip tests marked slow
#   bash launch/dev.sh python ...    # anything else inside the environment
#   bash launch/dev.sh setup-core    # core-only environment: Python 3.12, newest releases
#   bash launch/dev.sh test-core ... # pytest inside it (tests needing the FHE libraries skip)
#
# The pinned environment (Python 3.11, the FHE set) lives in $LINALIGN_VENV (default: .venv in
# the repository) and is rebuilt only when requirements change. The core environment lives in
# $LINALIGN_CORE_VENV (default: .venv-core), uses $PYTHON_CORE (default: pyenv's 3.12, else
# python3.12) and is upgraded to the newest releases on every setup-core; it gets the
# `reference` extra (torch, for the parity tests) unless LINALIGN_CORE_TORCH=0.
# torch comes from PyTorch's CPU wheel index ($LINALIGN_TORCH_INDEX, default
# https://download.pytorch.org/whl/cpu; set it empty for PyPI's default, a CUDA build on Linux).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${LINALIGN_VENV:-$here/.venv}"
py="${PYTHON:-python3}"
torch_index="${LINALIGN_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
index_args=()

# The torch index is checked once, before an install: pip retries an unreachable extra index
# five times for every package it resolves, which cost a networkless install about 15 minutes.
use_torch_index() {
  [ -n "$torch_index" ] || return 0
  if "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/", timeout=10)' \
      "$torch_index" >/dev/null 2>&1; then
    index_args=(--extra-index-url "$torch_index")
  else
    echo "[linalign] $torch_index is unreachable; leaving it out (torch then comes from pip's" \
      "other sources; PyPI's Linux torch is a CUDA build)" >&2
  fi
}

stamp_of() { cat requirements.txt requirements.lock requirements-fhe-nodeps.txt setup.py | sha256sum | cut -d' ' -f1; }

setup_env() {
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.linalign-stamp" 2>/dev/null)" = "$(stamp_of)" ]; then
    return
  fi
  echo "[linalign] creating environment in $venv" >&2
  local t0=$SECONDS
  use_torch_index
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "${index_args[@]}" -r requirements.txt -c requirements.lock
  # Concrete ML pins torch 2.3.1 and transformers<4.58; its real requirements are met by the
  # set above, so it goes in without its own pins (see BUILD_NOTES.md).
  "$venv/bin/python" -m pip install -q --no-deps -r requirements-fhe-nodeps.txt
  "$venv/bin/python" -m pip install -q --no-deps -e .
  stamp_of > "$venv/.linalign-stamp"
  echo "[linalign] environment ready in $((SECONDS - t0)) s ($(du -sh "$venv" | cut -f1))" >&2
}

core_venv="${LINALIGN_CORE_VENV:-$here/.venv-core}"

core_python() {
  if [ -n "${PYTHON_CORE:-}" ]; then echo "$PYTHON_CORE"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for p in "$(pyenv root)"/versions/3.12.*/bin/python3.12; do
      [ -x "$p" ] && { echo "$p"; return; }
    done
  fi
  if python3.12 -c 'import sys' >/dev/null 2>&1; then command -v python3.12; return; fi
  echo "[linalign] no Python 3.12 found; set PYTHON_CORE" >&2
  return 1
}

setup_core() {
  local t0=$SECONDS extras="dev,reference"
  use_torch_index
  [ "${LINALIGN_CORE_TORCH:-1}" = "0" ] && extras="dev"
  if [ ! -x "$core_venv/bin/python" ]; then
    local cpy; cpy="$(core_python)"
    echo "[linalign] creating core environment in $core_venv ($("$cpy" -V))" >&2
    "$cpy" -m venv "$core_venv"
  fi
  # Unpinned on purpose: this environment tracks the newest jax/flax/numpy releases. torch from
  # the CPU index (PyPI's Linux torch is a CUDA build: about 4 GB more with its libraries).
  "$core_venv/bin/python" -m pip install -q "${index_args[@]}" -U --upgrade-strategy eager -e ".[$extras]"
  echo "[linalign] core environment ready in $((SECONDS - t0)) s ($(du -sh "$core_venv" | cut -f1)):" \
    "$("$core_venv/bin/python" -c 'import jax, flax, numpy, sys; print(f"Python {sys.version.split()[0]}, jax {jax.__version__}, flax {flax.__version__}, numpy {numpy.__version__}")')" >&2
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup_env ;;
  demo) setup_env; exec "$venv/bin/python" -m linalign.experiments --study=demo "$@" ;;
  test) setup_env; exec "$venv/bin/python" -m pytest -q "$@" ;;
  test-fast) setup_env; exec "$venv/bin/python" -m pytest -q -m "not slow" "$@" ;;
  python) setup_env; exec "$venv/bin/python" "$@" ;;
  setup-core) setup_core ;;
  test-core) [ -x "$core_venv/bin/python" ] || setup_core; exec "$core_venv/bin/python" -m pytest -q "$@" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
