"""Training throughput of every method at its paper configuration, and of the input pipeline.

For each method, its real-dataset config in ``examples/configs/`` (ResNet-50, the paper's
image size, batch, optimizers, the callbacks the method needs: pseudo-labelling, mean
teacher, IICS stages) is trained for ``--steps`` batches in fp32 and in bf16-mixed, the model
in ``channels_last``; the table gives training images / s (median step after ``--warmup``)
and the peak GPU memory (``torch.cuda.max_memory_allocated``). The datasets are replaced by
the synthetic domains (``synthetic:mall`` -> ``synthetic:street``: JPEG files of Market-1501's
64 x 128 size, 200 train ids), the ImageNet weights by random ones and the checkpoints a
method starts from (``pretrained``, ``teacher``) by random checkpoints of the right class:
the cost does not depend on the weights. The first epoch's phase is timed (IS-GAN: stage 1,
DG-Net++: round 0, IICS: an intra-camera epoch of a one-round schedule), clusterings
between epochs are not.

The input pipeline alone: the same method's training loader (JPEG decode, resize, flip,
pad + crop, erasing, collate, with the config's ``num_workers``) iterated without a model,
images / s; "input-bound" marks a method whose pipeline is slower than its training step.

Without a GPU the same code runs at CPU size (images a quarter of the paper's sides, fp32
and bf16-mixed on the CPU, peak memory = the process's resident set) and says so; those
numbers say nothing about a GPU.

    python benchmarks/gpu_throughput.py                       # every method (GPU machine)
    python benchmarks/gpu_throughput.py --methods baseline dgnetpp --steps 30
    python benchmarks/gpu_throughput.py --steps 4 --warmup 1  # CPU smoke
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from gan_cost import PhaseTimer, cpu_description  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
RESULTS = ROOT / "docs" / "benchmarks" / "gpu_throughput.json"
METHODS = {  # the paper configuration of each method (Market-1501 or Market -> Duke)
    "baseline": "baseline_market.yaml",
    "dcdfa": "dcdfa_market_to_duke.yaml",
    "iics": "iics_market.yaml",
    "arn": "arn_market_to_duke.yaml",
    "isgan": "isgan_market.yaml",
    "dgnet": "dgnet_market.yaml",
    "dgnetpp": "dgnetpp_market_to_duke.yaml",
}
SYNTHETIC = {"num_train_ids": 200, "num_test_ids": 20, "images_per_id": 12}
# the callbacks a method's training needs; the others (evaluation, checkpoints, figures,
# loggers) are dropped
TRAINING_CALLBACKS = ("PseudoLabeling", "MeanTeacher", "IICSStages")
PRECISIONS = ("32", "bf16-mixed")
SECTION = "## Training throughput per method (paper configurations)"


def current_epoch(module: pl.LightningModule) -> int:
    return module.trainer.current_epoch


class StepTimer(PhaseTimer):
    """:class:`gan_cost.PhaseTimer` per epoch (``times[0]``, ``memory[0]``: the first
    epoch's), plus the images per step; the model is put in ``channels_last`` at the
    start."""

    def __init__(self, warmup: int = 2) -> None:
        super().__init__(current_epoch, warmup, cuda=torch.cuda.is_available())
        self.images = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.images = count_images(batch)


def count_images(batch) -> int:
    """Images a training batch feeds the model: its image tensors (with their positives,
    for the pair loaders), over every loader of a combined batch."""
    if isinstance(batch, dict):
        return sum(count_images(b) for b in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(count_images(b) for b in batch)
    return batch.shape[0] if torch.is_tensor(batch) and batch.dim() == 4 else 0


def random_checkpoint(cls, path: Path, **kwargs) -> str:
    """A Lightning checkpoint of ``cls(**kwargs)`` with random weights."""
    if not path.exists():
        module = cls(**kwargs)
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "pytorch-lightning_version": pl.__version__}, path)
    return str(path)


def benchmark_config(method: str, precision: str, cpu_size: bool, steps: int, warmup: int,
                     workdir: Path) -> Path:
    """The method's paper config made runnable here (see the module docstring)."""
    from reidlab.modules import Baseline, DGNet

    config = yaml.safe_load((CONFIGS / METHODS[method]).read_text())
    trainer = config["trainer"]
    trainer["callbacks"] = [c for c in trainer.get("callbacks", [])
                            if c["class_path"].rsplit(".", 1)[-1] in TRAINING_CALLBACKS]
    trainer["callbacks"].append({"class_path": "gpu_throughput.StepTimer",
                                 "init_args": {"warmup": warmup}})
    trainer.update(accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1,
                   precision=precision, max_epochs=1, limit_train_batches=steps,
                   limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   default_root_dir=str(workdir))
    data = config["data"]["init_args"]
    for key, domain in (("dataset", "mall"), ("source", "mall"), ("target", "street")):
        if data.get(key) is not None:
            data[key] = f"synthetic:{domain}"
            kwargs_key = "dataset_kwargs" if key == "dataset" else f"{key}_kwargs"
            data[kwargs_key] = dict(SYNTHETIC)
    for key in ("root", "source_root", "target_root"):
        data.pop(key, None)
    if cpu_size:
        data["height"] //= 4
        data["width"] //= 4
    model = config["model"]["init_args"]
    if "image_size" in model:  # IS-GAN builds its generator for the image size
        model["image_size"] = [data["height"], data["width"]]
    if "rounds" in model:  # IICS checks max_epochs against its schedule: one round
        model["rounds"] = 1
        trainer["max_epochs"] = model.get("intra_epochs", 2) + model.get("inter_epochs", 2)
    if "weights" in model:
        model["weights"] = None
    backbone = model.get("backbone", "resnet50")
    classes = SYNTHETIC["num_train_ids"]
    if "pretrained" in model or "teacher" in model:
        baseline = random_checkpoint(Baseline, workdir / f"baseline_{backbone}.ckpt",
                                     num_classes=classes, backbone=backbone, weights=None)
    if "teacher" in model:
        model["teacher"] = baseline
    if "pretrained" in model:
        if config["model"]["class_path"].endswith("DGNetPP"):  # DG-Net++ starts from DG-Net
            accepted = inspect.signature(DGNet).parameters
            architecture = {k: v for k, v in model.items()
                            if k in accepted and k not in ("pretrained", "teacher")}
            model["pretrained"] = random_checkpoint(
                DGNet, workdir / f"dgnet_{backbone}.ckpt", num_classes=classes,
                teacher=None, **architecture)
        else:
            model["pretrained"] = baseline
    path = workdir / f"{method}_{precision}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pipeline_rate(loader, batches: int) -> float:
    """Images / s of ``loader`` alone (after one batch: the workers' start)."""
    iterator = iter(loader)
    next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        images += count_images(batch)
    return images / (time.perf_counter() - start)


def measure(method: str, precision: str, cpu_size: bool, steps: int, warmup: int,
            workdir: Path, first: bool) -> dict:
    """One fit of ``method`` at ``precision``; ``first``: also the input pipeline's rate."""
    from reidlab.cli import run_cli

    path = benchmark_config(method, precision, cpu_size, steps, warmup, workdir)
    cli = run_cli(["fit", "--config", str(path)])
    timer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepTimer")
    step = statistics.median(timer.times[0])
    result = {"method": method, "precision": precision, "images_per_step": timer.images,
              "s_per_step": step, "train_img_s": timer.images / step,
              "peak_gib": timer.memory[0] / 2**30}
    if first:
        result["pipeline_img_s"] = pipeline_rate(cli.datamodule.train_dataloader(), max(steps, 30))
    return result


def table(results: list[dict], cuda: bool) -> str:
    unit = "GPU memory (GiB)" if cuda else "peak RSS (GiB)"
    lines = [f"| method | images / step | fp32 img/s | bf16 img/s | bf16 / fp32 | fp32 {unit} "
             f"| bf16 {unit} | input pipeline img/s | bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        by = {r["precision"]: r for r in results if r["method"] == method}
        fp32, bf16 = by.get("32"), by.get("bf16-mixed")
        first = fp32 or bf16
        pipeline = next(r["pipeline_img_s"] for r in by.values() if "pipeline_img_s" in r)
        fastest = max(r["train_img_s"] for r in by.values())
        ratio = f"{bf16['train_img_s'] / fp32['train_img_s']:.2f}" if fp32 and bf16 else "-"

        def cell(run, key, fmt):
            return format(run[key], fmt) if run else "-"
        lines.append(f"| {method} | {first['images_per_step']} | "
                     f"{cell(fp32, 'train_img_s', '.1f')} | {cell(bf16, 'train_img_s', '.1f')} | "
                     f"{ratio} | {cell(fp32, 'peak_gib', '.2f')} | {cell(bf16, 'peak_gib', '.2f')} "
                     f"| {pipeline:.0f} | {'input' if pipeline < fastest else 'compute'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=20, help="training batches per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    args = parser.parse_args()
    # before the runs: the in-process CLI cuts sys.argv to the program name
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.cuda.get_device_name()
    else:
        device = f"{cpu_description()}, {torch.get_num_threads()} threads"
        print("no GPU: running at CPU size (images a quarter of the paper's sides, on the "
              "CPU); these numbers say nothing about GPU throughput", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for precision in args.precisions:
                result = measure(method, precision, not cuda, args.steps, args.warmup,
                                 Path(tmp), first=precision == args.precisions[0])
                print(json.dumps(result), flush=True)
                results.append(result)
    header = (f"{'GPU' if cuda else 'CPU size (no GPU)'}: {device}; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}; median of {args.steps - args.warmup} "
              "steps per run")
    body = f"`{command}`. {header}.\n\n{table(results, cuda)}"
    print(body)
    if not args.no_docs:
        what = ("" if cuda else "\n\nNo GPU was lent to this task: the table is the script's "
                "CPU-size run (images at a quarter of the paper's sides), a check that every "
                "method's paper configuration runs through it, not a GPU measurement.")
        write_section(f"{SECTION}\n\n{__doc__.split(chr(10) * 2)[1]}{what}\n\n{body}\n")
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        saved["gpu" if cuda else "cpu"] = {"device": device, "header": header, "runs": results}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
