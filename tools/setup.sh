#!/usr/bin/env bash
# Set up everything cnnlens needs in ./.venv (idempotent): the package in editable mode with its dev tools.
# Installs the newest torch/torchvision from the registry (a CUDA build that also runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
