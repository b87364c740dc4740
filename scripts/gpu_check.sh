#!/usr/bin/env bash
# GPU check (CUDA machine, no data set: random tensors) for the default model and model.size=lite:
# bf16 inference frames/s at DRV's grid and 1080p, training images/s and peak memory per preset, each with
# torch.compile off and on (scripts/gpu_check.py says what is measured and how).
# Usage: scripts/gpu_check.sh [--tiny] [--compile both|off|on] [OUT]   (default OUT result/gpu_check)
#   --tiny: on the CPU at tiny sizes with the eager compile backend, to check that it runs before a GPU is booked.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
