#!/usr/bin/env bash
# Create .venv (or reuse it) and install reidlab with the pinned, known-good constraints.
# Usage: bash scripts/setup.sh        (REIDLAB_VENV=/path overrides the location)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REIDLAB_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.reidlab-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing reidlab and its dependencies (pinned by constraints.txt; ~2 min)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
