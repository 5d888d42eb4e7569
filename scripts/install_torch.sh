#!/usr/bin/env bash
# Install PyTorch into the given Python without ever pulling a multi-GB CUDA build onto a machine with no GPU.
#   scripts/install_torch.sh PYTHON [VERSION]
# GPU present (nvidia-smi lists one): PyPI's default (CUDA) wheel.
# No GPU: a CPU wheel — from the machine's local wheel directory when pip is configured with one
# (find-links), otherwise from PyTorch's CPU index.
set -euo pipefail
py=${1:?usage: install_torch.sh PYTHON [VERSION]}
version=${2:-2.13.0}
if "$py" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$version' else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$py" -m pip install "torch==$version"
elif "$py" -m pip install --no-index --no-deps "torch==$version" 2>/dev/null; then
  "$py" -m pip install "torch==$version"   # its small dependencies, from PyPI
else
  "$py" -m pip install "torch==$version" --index-url https://download.pytorch.org/whl/cpu \
    --extra-index-url https://pypi.org/simple
fi
