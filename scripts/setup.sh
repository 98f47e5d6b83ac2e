#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with labelq and its dev tools.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# PyTorch first, pinned as a pair: on the project's build machines these come from local
# wheels (timm needs torchvision, and PyPI's torchvision does not import beside other torch
# builds). Users elsewhere can install any torch/torchvision pair the pyproject ranges allow.
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
  python -m pip install -q "torch==${LABELQ_TORCH_VERSION:-2.14.1}" "torchvision==${LABELQ_TORCHVISION_VERSION:-0.29.1}"
fi
python -m pip install -q -e ".[dev]"
