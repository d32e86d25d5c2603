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
python -c "import torch, transformers; print(f'setup ok: torch {torch.__version__}, transformers {transformers.__version__}')"
