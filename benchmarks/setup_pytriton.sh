#!/usr/bin/env bash
# Install the PyTriton peer into its own venv (.venv-pytriton, ignored by git).
# numpy<2: PyTriton 0.7 returns broken outputs with numpy 2 (see ../shared/notes/triton-protocol.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv-pytriton/bin/python ] || "$PY" -m venv .venv-pytriton
.venv-pytriton/bin/pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime"
echo "PyTriton peer ready: .venv-pytriton/bin/python"
