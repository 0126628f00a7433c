#!/usr/bin/env bash
# Create .venv-peers with the detectors the benchmarks compare against: torchvision's
# SSDlite and ultralytics' YOLOv8n, and the py-spy profiler. They stay out of the project's own environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=.venv-peers
if [ ! -f "$VENV/.installed" ]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 pycocotools==2.0.11 py-spy==0.4.3 onnx==1.23.2
  touch "$VENV/.installed"
fi
"$VENV/bin/python" -c "import torch, torchvision, ultralytics; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ultralytics', ultralytics.__version__)"
