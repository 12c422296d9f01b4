#!/usr/bin/env bash
# Sets up a local environment (once) and runs a linalign job on this machine.
#
#   bash launch/dev.sh demo          # the main job on the bundled real models
#   bash launch/dev.sh test          # the whole test suite (real-model tests included)
#   bash launch/dev.sh test-fast     # skip tests marked slow
#   bash launch/dev.sh python ...    # anything else inside the environment
#
# The environment lives in $LINALIGN_VENV (default: .venv in the repository) and is
# rebuilt only when requirements change.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${LINALIGN_VENV:-$here/.venv}"
py="${PYTHON:-python3}"

stamp_of() { cat requirements.txt requirements.lock requirements-fhe-nodeps.txt setup.py | sha256sum | cut -d' ' -f1; }

setup_env() {
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.linalign-stamp" 2>/dev/null)" = "$(stamp_of)" ]; then
    return
  fi
  echo "[linalign] creating environment in $venv" >&2
  local t0=$SECONDS
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -r requirements.txt -c requirements.lock
  # Concrete ML pins torch 2.3.1 and transformers<4.58; its real requirements are met by the
  # set above, so it goes in without its own pins (see BUILD_NOTES.md).
  "$venv/bin/python" -m pip install -q --no-deps -r requirements-fhe-nodeps.txt
  "$venv/bin/python" -m pip install -q --no-deps -e .
  stamp_of > "$venv/.linalign-stamp"
  echo "[linalign] environment ready in $((SECONDS - t0)) s ($(du -sh "$venv" | cut -f1))" >&2
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup_env ;;
  demo) setup_env; exec "$venv/bin/python" -m linalign.experiments --study=demo "$@" ;;
  test) setup_env; exec "$venv/bin/python" -m pytest -q "$@" ;;
  test-fast) setup_env; exec "$venv/bin/python" -m pytest -q -m "not slow" "$@" ;;
  python) setup_env; exec "$venv/bin/python" "$@" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
