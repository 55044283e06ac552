#!/usr/bin/env bash
# One command on a fresh machine: set up, then run the main demo workflow headless in real ComfyUI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} exec .venv/bin/python -m scripts.demo "$@"
