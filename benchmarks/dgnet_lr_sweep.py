"""DG-Net's appearance-encoder learning rates on the synthetic pair, chosen on the source.

The authors train E_a with SGD at 2e-3 (backbone) and 2e-2 (heads) for 100k iterations of
ResNet-50; the synthetic config has 400 iterations of MobileNetV2. This sweep trains
``examples/configs/synthetic/dgnet.yaml`` with both rates multiplied by each ``--scales``
value and reports the mAP on the *source's* held-out test identities (the selection
criterion: no target label is looked at) next to the target mAP (for information), with
the identity loss averaged over each epoch (40 iterations).

    python benchmarks/dgnet_lr_sweep.py --scales 1 0.3 0.1 --sources mall --threads 1

One process per source side by side; each run is appended at once to
``docs/benchmarks/dgnet_lr_sweep.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from uda_synthetic import CONFIGS, direct_transfer_checkpoint, swap_domains  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "dgnet_lr_sweep.json"


def last_map(trainer) -> float:
    from reidlab.callbacks import RetrievalEvaluation

    return next(c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation)).last["mAP"]


class EpochIdentityLoss(pl.Callback):
    """Mean of the logged identity loss over each training epoch."""

    def __init__(self):
        self.losses, self.per_epoch = [], []

    def on_train_batch_end(self, trainer, *args):
        self.losses.append(float(trainer.callback_metrics["train/id"]))

    def on_train_epoch_end(self, trainer, module):
        self.per_epoch.append(sum(self.losses) / len(self.losses))
        self.losses = []


def sweep_run(scale: float, reverse: bool, seed: int, ckpt_dir: Path, workdir: Path,
              epochs: int | None) -> dict:
    from reidlab.cli import run_cli

    config = yaml.safe_load((CONFIGS / "dgnet.yaml").read_text())
    if reverse:
        config["data"] = swap_domains(config["data"])
    model = config["model"]["init_args"]
    model["teacher"] = str(direct_transfer_checkpoint(reverse, seed, ckpt_dir))
    model["lr_backbone"] = 2e-3 * scale  # the authors' rates (DGNet's defaults) x scale
    model["lr_heads"] = 2e-2 * scale
    config["seed_everything"] = seed
    config["data"]["init_args"]["seed"] = seed
    config["trainer"].update(logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, default_root_dir=str(workdir))
    if epochs is not None:
        config["trainer"]["max_epochs"] = config["trainer"]["check_val_every_n_epoch"] = epochs
    target_config = copy.deepcopy(config)
    config["trainer"]["callbacks"].append({"class_path": "dgnet_lr_sweep.EpochIdentityLoss"})
    # validation on the source's test identities: the target domain is only evaluated
    # (DG-Net trains on source-source pairs), so the source in its place changes nothing else
    config["data"]["init_args"]["target"] = config["data"]["init_args"]["source"]
    (workdir / "source.yaml").write_text(yaml.safe_dump(config))
    (workdir / "target.yaml").write_text(yaml.safe_dump(target_config))

    start = time.perf_counter()
    cli = run_cli(["fit", "--config", str(workdir / "source.yaml")])
    seconds = time.perf_counter() - start
    losses = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EpochIdentityLoss")
    ckpt = workdir / "dgnet.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    source_map = last_map(cli.trainer)
    target = run_cli(["validate", "--config", str(workdir / "target.yaml"), "--ckpt_path",
                      str(ckpt)])
    return {"scale": scale, "seed": seed, "source_mAP": source_map,
            "target_mAP": last_map(target.trainer), "id_loss_per_epoch": losses.per_epoch,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.3, 0.1])
    parser.add_argument("--sources", nargs="+", default=["mall", "street"],
                        choices=["mall", "street"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt-dir", type=Path,
                        default=Path.home() / ".cache" / "reidlab" / "benchmarks")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="smoke: fewer epochs, not saved")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for source in args.sources:
        for scale in args.scales:
            with tempfile.TemporaryDirectory() as tmp:
                run = sweep_run(scale, source == "street", args.seed, args.ckpt_dir, Path(tmp),
                                args.epochs)
            run["source"] = source
            print(json.dumps(run), flush=True)
            if args.epochs is not None:
                continue
            runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
            runs = [r for r in runs if (r["source"], r["scale"], r["seed"])
                    != (source, scale, args.seed)] + [run]
            RESULTS.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
