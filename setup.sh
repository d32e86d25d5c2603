#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with PyTorch and the requirements.
# On a machine without a GPU it installs the CPU build of PyTorch first, so that no
# multi-GB CUDA build is downloaded. Re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q torch
  else
    pip install -q torch==2.13.0 || pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install -q -r requirements.txt
# SETUP_BROWSER=1 (CI sets it): Chromium from the system's packages, for the run report's browser
# test (tests/test_report.py); skipped when one is already installed. Debian/Ubuntu, as root or via sudo.
if [ "${SETUP_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  log=$(mktemp)
  echo "setup: installing chromium (apt-get)"
  if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
         && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-liberation; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "setup: error: could not install chromium" >&2; exit 1
  fi
  rm -f "$log"
fi
python -c "import torch, transformers; print(f'setup ok: torch {torch.__version__}, transformers {transformers.__version__}')"
