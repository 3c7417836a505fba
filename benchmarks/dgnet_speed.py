"""DG-Net++ training cost per round type: seconds per step and peak memory, fp32 vs
bf16-mixed.

Each run is a real ``Trainer.fit`` of :class:`reidlab.modules.DGNetPP` through round 0
(adversarial alignment: image and domain discriminators, teacher) and one self-training
round, one epoch of ``--steps`` batch types each (the first ``--warmup`` of each not timed),
on the synthetic pair (mall -> street) with 8 + 8 images and their positives per step; the
re-clusterings between epochs are not timed. Precisions alternate run by run
(``--repeats``), so machine noise hits both alike; the table gives medians and the
bf16 / fp32 ratio. The weights are random (ImageNet-shaped): the cost does not depend on
them.

* ``--size cpu`` (default): the CPU benchmark's model (the architecture of
  examples/configs/synthetic/dgnet.yaml: MobileNetV2 E_a, generators and discriminator at
  half width, 96 x 48 images); peak memory is the process's resident set (sampled).
* ``--size paper``: ResNet-50 at 256 x 128 with the authors' generator and discriminators on
  the GPU: images / s and peak GPU memory (``torch.cuda.max_memory_allocated``) per round
  type, the memory per GPU of a DDP run (each GPU holds the whole model and its own batch).
  Without a GPU it says so and exits.

    python benchmarks/dgnet_speed.py --threads 2                 # CPU table -> docs
    python benchmarks/dgnet_speed.py --size paper --steps 30     # on a GPU machine
"""

from __future__ import annotations

import argparse
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
from eval_speed import PeakRSS  # noqa: E402

from reidlab.callbacks import PseudoLabeling  # noqa: E402
from reidlab.datamodules import CrossDomainDataModule  # noqa: E402
from reidlab.modules import Baseline, DGNetPP  # noqa: E402

ARCHITECTURE = ("backbone", "structure_channels", "code_channels", "residual_blocks",
                "mlp_hidden", "decoder_channels", "discriminator_scales", "discriminator_width",
                "discriminator_blocks")
CPU_MODEL = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "configs"
                            / "synthetic" / "dgnet.yaml").read_text())["model"]["init_args"]
SIZES = {"cpu": dict(height=96, width=48,
                     model={k: v for k, v in CPU_MODEL.items() if k in ARCHITECTURE}),
         "paper": dict(height=256, width=128, model=dict(backbone="resnet50"))}
ROUNDS = {0: "round 0 (alignment)", 1: "self-training"}
SECTION = "## DG-Net++ training cost"
SOURCE = dict(num_train_ids=250, num_test_ids=20, images_per_id=20)
TARGET = dict(num_train_ids=50, num_test_ids=20, images_per_id=20)  # a short clustering


class RoundTimer(pl.Callback):
    """Per round: step durations after ``warmup`` steps, and peak memory."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.times: dict[int, list[float]] = {}
        self.memory: dict[int, int] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.times[pl_module.round] = []
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.rss = PeakRSS().__enter__()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        if batch_idx >= self.warmup:
            self.times[pl_module.round].append(time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.cuda:
            self.memory[pl_module.round] = torch.cuda.max_memory_allocated()
        else:
            self.rss.__exit__(None, None, None)
            self.memory[pl_module.round] = self.rss.peak


def run(size: str, precision: str, steps: int, warmup: int, workdir: str) -> RoundTimer:
    cuda = size == "paper"
    spec = SIZES[size]
    dm = CrossDomainDataModule(source="synthetic:mall", target="synthetic:street",
                               source_kwargs=SOURCE, target_kwargs=TARGET,
                               height=spec["height"], width=spec["width"],
                               batches="domain_pairs", pair_batch_size=8, num_workers=2)
    teacher = Path(workdir) / "teacher.ckpt"
    if not teacher.exists():
        base = Baseline(num_classes=SOURCE["num_train_ids"],
                        backbone=spec["model"]["backbone"],
                        weights=None)
        torch.save({"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams),
                    "pytorch-lightning_version": pl.__version__}, teacher)
    model = DGNetPP(num_classes=SOURCE["num_train_ids"], teacher=str(teacher), weights=None,
                    max_clusters=1000, round0_epochs=1, round_epochs=1, **spec["model"])
    timer = RoundTimer(warmup, cuda)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                         max_epochs=2, limit_train_batches=steps, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         reload_dataloaders_every_n_epochs=1, default_root_dir=workdir,
                         callbacks=[timer, PseudoLabeling(distance="reranked", eps=0.45,
                                                          min_samples=7, k1=20, k2=6)],
                         use_distributed_sampler=False)
    trainer.fit(model, dm)
    return timer


def table(size: str, results: dict[str, list[RoundTimer]], batch: int) -> str:
    unit = "GPU memory (GiB)" if size == "paper" else "peak RSS (GiB)"
    lines = [f"| round | fp32 s/step | bf16 s/step | bf16 / fp32 | fp32 img/s | bf16 img/s | "
             f"fp32 {unit} | bf16 {unit} |", "|---|---|---|---|---|---|---|---|"]
    for key, name in ROUNDS.items():
        med = {p: statistics.median([t for r in runs for t in r.times[key]])
               for p, runs in results.items()}
        mem = {p: max(r.memory[key] for r in runs) / 2**30 for p, runs in results.items()}
        lines.append(f"| {name} | {med['32']:.3f} | {med['bf16-mixed']:.3f} | "
                     f"{med['bf16-mixed'] / med['32']:.2f} | {batch / med['32']:.1f} | "
                     f"{batch / med['bf16-mixed']:.1f} | {mem['32']:.2f} | "
                     f"{mem['bf16-mixed']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="batch types per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per round")
    parser.add_argument("--repeats", type=int, default=2, help="runs per precision")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.size == "paper" and not torch.cuda.is_available():
        print("no GPU: --size paper measures images/s and GPU memory per GPU at 256 x 128 on "
              "a CUDA device, and this machine has none (run --size cpu here)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "offline")
    results: dict[str, list[RoundTimer]] = {"32": [], "bf16-mixed": []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for precision in results:
                results[precision].append(run(args.size, precision, args.steps, args.warmup,
                                              workdir))
    device = torch.cuda.get_device_name() if args.size == "paper" else \
        f"CPU, {torch.get_num_threads()} threads"
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    load = os.getloadavg()[0]
    body = (f"`{command}` ({device}; {os.cpu_count()} cores, load average {load:.1f} at the "
            f"end; medians of {args.repeats} x {args.steps - args.warmup} steps per round "
            "type; 8 + 8 images with their positives per step)\n\n"
            + table(args.size, results, 16))
    print(body)
    if not args.no_docs and args.size == "cpu":
        write_section(f"{SECTION}\n\n" + body + "\n")


if __name__ == "__main__":
    main()
