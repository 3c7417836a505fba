"""``reidlab fit`` through the CLI under 2-process CPU DDP (gloo): a tiny direct-transfer
Baseline on a half-width MobileNetV2 (channels-last), CSV logs in OUT_DIR.

Usage: python ddp_cli.py OUT_DIR

Fails (non-zero exit) when DDP has to copy gradients whose strides differ from their
parameters' (a layout mismatch) or when the end of the run is not reached on every rank.
"""

import sys
import warnings
from pathlib import Path

from reidlab.cli import main
from tests.helpers import synthetic_cli_args

warnings.filterwarnings("error", message="Grad strides do not match bucket view strides")
out = Path(sys.argv[1])
main(["fit", *synthetic_cli_args(
    "direct_transfer.yaml", out, "--model.init_args.backbone", "mobilenet_v2",
    "--model.init_args.backbone_width", "0.5", "--trainer.devices", "2",
    "--trainer.strategy", "ddp")])
