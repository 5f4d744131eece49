#!/usr/bin/env bash
# Set up everything cnnlens needs (idempotent): ./.venv with the package in editable mode and its dev tools
# (the newest torch/torchvision from the registry: a CUDA build that also runs on the CPU), the front-end
# bundle (built by the package's build hook with npm + esbuild), and Debian's Chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
