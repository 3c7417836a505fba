#!/usr/bin/env bash
# Set up, then run the whole test suite, on REIDLAB_TEST_WORKERS (default 2) pytest-xdist
# workers. Extra arguments go to pytest (REIDLAB_TEST_WORKERS=0 runs in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline
workers=${REIDLAB_TEST_WORKERS:-2}
parallel=()
if [ "$workers" != "0" ]; then parallel=(-n "$workers"); fi
exec "${REIDLAB_VENV:-.venv}/bin/python" -m pytest -q "${parallel[@]}" "$@"
