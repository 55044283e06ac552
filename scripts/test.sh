#!/usr/bin/env bash
# The whole test suite (CI runs exactly this through .ci/run). Sets up first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# torch's default threading is 5-10x slower under CPU contention; pytest's exit 5 (no tests
# collected) is non-zero and fails the run.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} exec .venv/bin/python -m pytest "$@"
