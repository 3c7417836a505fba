"""Does ARN's source supervision re-fit E_C to the source? Source accuracy of C_S and target
mAP over epochs, for several weights of L_class.

The hypothesis (docs/benchmarks.md, "ARN on the synthetic pair"): E_C starts as the
direct-transfer feature; L_class and L_ctrs then pull it towards what separates the *source*
identities, while nothing but the reconstruction and difference losses speaks for the target,
so target mAP falls as source accuracy rises. If so, a smaller L_class weight should keep
more of the start's target mAP. Each run is ``examples/configs/synthetic/arn.yaml`` from the
direct-transfer checkpoint of ``benchmarks/uda_synthetic.py`` (trained when missing), with
``class_weight`` overridden and a validation every ``--val-every`` epochs (epoch 0 = the
start, before any ARN step).

    python benchmarks/arn_source_fit.py --weights 1 0.1 0 --seed 0 --threads 1

Writes ``docs/benchmarks/arn_source_fit.json``, a figure ``docs/benchmarks/arn_source_fit.png``
and the section "## ARN: does the source supervision re-fit E_C?" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from uda_synthetic import CONFIGS, DIRECTIONS, direct_transfer_checkpoint, swap_domains  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "arn_source_fit.json"
FIGURE = ROOT / "docs" / "benchmarks" / "arn_source_fit.png"
SECTION = "## ARN: does the source supervision re-fit E_C?"


def run(weight: float, reverse: bool, seed: int, val_every: int, ckpt_dir: Path,
        epochs: int | None = None) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import TrainerFn

    from reidlab.callbacks import RetrievalEvaluation
    from reidlab.cli import run_cli

    class Curve(pl.Callback):
        """Mean source accuracy of each epoch's steps, target mAP at each validation."""

        def __init__(self) -> None:
            self.accuracy: list[float] = []
            self.map: dict[int, float] = {}
            self._steps: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            value = trainer.callback_metrics.get("train/source_accuracy_step")
            if value is not None:
                self._steps.append(float(value))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.accuracy.append(sum(self._steps) / max(len(self._steps), 1))
            self._steps = []

        def on_validation_end(self, trainer, pl_module) -> None:
            evaluation = next(c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation))
            fitting = trainer.state.fn == TrainerFn.FITTING
            self.map[trainer.current_epoch + 1 if fitting else 0] = float(evaluation.last["mAP"])

    config = yaml.safe_load((CONFIGS / "arn.yaml").read_text())
    if reverse:
        config["data"] = swap_domains(config["data"])
    config["model"]["init_args"] |= {
        "pretrained": str(direct_transfer_checkpoint(reverse, seed, ckpt_dir)),
        "class_weight": weight}
    config["seed_everything"] = seed
    config["data"]["init_args"]["seed"] = seed
    config["trainer"] |= {"logger": False, "enable_checkpointing": False,
                          "enable_progress_bar": False, "check_val_every_n_epoch": val_every}
    if epochs is not None:
        config["trainer"]["max_epochs"] = epochs
    with tempfile.TemporaryDirectory() as tmp:
        config["trainer"]["default_root_dir"] = tmp
        path = Path(tmp) / "arn.yaml"
        path.write_text(yaml.safe_dump(config))
        cli = run_cli(["--config", str(path)], run=False)
        curve = Curve()
        cli.trainer.callbacks.append(curve)
        cli.trainer.validate(cli.model, cli.datamodule)  # epoch 0: the start
        cli.trainer.fit(cli.model, cli.datamodule)
    return {"class_weight": weight, "seed": seed, "source_accuracy": curve.accuracy,
            "target_map": {str(k): v for k, v in sorted(curve.map.items())}}


def figure(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_map) = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in runs:
        label = f"{r['direction']}, L_class x {r['class_weight']:g}"
        epochs = range(1, len(r["source_accuracy"]) + 1)
        ax_acc.plot(epochs, r["source_accuracy"], marker="o", label=label)
        ax_map.plot([int(k) for k in r["target_map"]], [100 * v for v in r["target_map"].values()],
                    marker="o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="C_S accuracy on source batches", ylim=(0, 1.02))
    ax_map.set(xlabel="epoch", ylabel="target mAP (%)")
    ax_map.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=80)
    plt.close(fig)


def write_docs(runs: list[dict], command: str) -> None:
    lines = ["| direction | L_class weight | seed | source accuracy, first -> last epoch | "
             "target mAP, start -> best -> last |", "|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["direction"], -r["class_weight"], r["seed"])):
        maps = list(r["target_map"].values())
        acc = r["source_accuracy"]
        lines.append(f"| {r['direction']} | {r['class_weight']:g} | {r['seed']} | "
                     f"{acc[0]:.2f} -> {acc[-1]:.2f} | {100 * maps[0]:.1f} -> "
                     f"{100 * max(maps):.1f} -> {100 * maps[-1]:.1f} |")
    body = (f"{SECTION}\n\nProduced by `{command}` (CPU; `examples/configs/synthetic/arn.yaml` "
            "from the direct-transfer checkpoint, validation on the target's query + gallery)."
            "\n\n" + "\n".join(lines) + "\n\n![ARN source fit](benchmarks/arn_source_fit.png)\n")
    write_section(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", type=float, default=[1.0, 0.1, 0.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directions", nargs="+", default=["mall->street"],
                        choices=list(DIRECTIONS))
    parser.add_argument("--val-every", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs (smoke)")
    parser.add_argument("--no-docs", action="store_true", help="print only, write nothing")
    parser.add_argument("--ckpt-dir", type=Path,
                        default=Path.home() / ".cache" / "reidlab" / "benchmarks")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for direction in args.directions:
        for weight in args.weights:
            result = run(weight, DIRECTIONS[direction], args.seed, args.val_every,
                         args.ckpt_dir, args.epochs) | {"direction": direction}
            print(json.dumps(result), flush=True)
            if not args.no_docs:
                save(result)


def save(result: dict) -> None:
    """Merge one run into the JSON file under a lock (one invocation per direction may run
    side by side), then re-draw the figure and the docs section from all runs."""
    with open(Path(tempfile.gettempdir()) / "reidlab_arn_source_fit.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        key = (result["direction"], result["class_weight"], result["seed"])
        runs = [r for r in runs if (r["direction"], r["class_weight"], r["seed"]) != key]
        runs.append(result)
        RESULTS.write_text(json.dumps(runs, indent=1))
        figure(runs)
        write_docs(runs, "python benchmarks/arn_source_fit.py --weights "
                   + " ".join(f"{w:g}" for w in sorted({r["class_weight"] for r in runs},
                                                      reverse=True))
                   + " --directions " + " ".join(f"'{d}'" for d in
                                                 sorted({r["direction"] for r in runs})))


if __name__ == "__main__":
    main()
