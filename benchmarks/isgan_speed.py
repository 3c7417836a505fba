"""IS-GAN training cost per stage: seconds per step and peak memory, fp32 vs bf16-mixed.

Each run is a real ``Trainer.fit`` of :class:`reidlab.modules.ISGAN` through the three
stages (one epoch of ``--steps`` batches each, the first ``--warmup`` batches of every stage
not timed) on the synthetic mall domain (4 ids x 4 images). Precisions alternate run by run
(``--repeats``), so machine noise hits both alike; the table gives medians and the
bf16 / fp32 ratio.

* ``--size cpu`` (default): the CPU benchmark's model (examples/configs/synthetic/isgan.yaml:
  ImageNet-shaped MobileNetV2, 96 x 48, G / D at 1/4 and 1/2 width); peak memory is the
  process's resident set (sampled) during the stage.
* ``--size paper``: ResNet-50 at 384 x 128 with the paper's G and D, on the GPU: images / s and
  peak GPU memory (``torch.cuda.max_memory_allocated``) per stage. Without a GPU it says so
  and exits.

    python benchmarks/isgan_speed.py --threads 2                 # CPU table -> docs
    python benchmarks/isgan_speed.py --size paper --steps 30     # on a GPU machine
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from eval_speed import PeakRSS  # noqa: E402

from reidlab.datamodules import ReIDDataModule  # noqa: E402
from reidlab.modules import ISGAN  # noqa: E402

SIZES = {
    "cpu": dict(model=dict(backbone="mobilenet_v2", image_size=(96, 48), generator_width=0.25,
                           discriminator_width=0.5),
                data=dict(height=96, width=48)),
    "paper": dict(model=dict(backbone="resnet50", image_size=(384, 128)),
                  data=dict(height=384, width=128)),
}
SECTION = "## IS-GAN training cost"


class StageTimer(pl.Callback):
    """Per stage: step durations after ``warmup`` steps, and peak memory."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.times: dict[int, list[float]] = {}
        self.memory: dict[int, int] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.times[pl_module.stage_at(trainer.current_epoch)] = []
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
            stage = pl_module.stage_at(trainer.current_epoch)
            self.times[stage].append(time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        stage = pl_module.stage_at(trainer.current_epoch)
        if self.cuda:
            self.memory[stage] = torch.cuda.max_memory_allocated()
        else:
            self.rss.__exit__(None, None, None)
            self.memory[stage] = self.rss.peak


def run(size: str, precision: str, steps: int, warmup: int, workdir: str) -> StageTimer:
    cuda = size == "paper"
    spec = SIZES[size]
    dm = ReIDDataModule(dataset="synthetic:mall", num_ids=4, num_instances=4, num_workers=2,
                        padding=0, erasing_p=0.0, interpolation="bicubic",
                        dataset_kwargs=dict(num_train_ids=250, num_test_ids=100,
                                            images_per_id=20),
                        **spec["data"])
    model = ISGAN(num_classes=250, weights=None, stage_epochs=(1, 1, 1), **spec["model"])
    timer = StageTimer(warmup, cuda)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision,
                         max_epochs=3, limit_train_batches=steps, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], default_root_dir=workdir,
                         use_distributed_sampler=False)
    trainer.fit(model, dm)
    return timer


def table(size: str, results: dict[str, list[StageTimer]], batch: int) -> str:
    unit = "GPU memory (GiB)" if size == "paper" else "peak RSS (GiB)"
    lines = [f"| stage | fp32 s/step | bf16 s/step | bf16 / fp32 | fp32 img/s | bf16 img/s | "
             f"fp32 {unit} | bf16 {unit} |", "|---|---|---|---|---|---|---|---|"]
    for stage in (1, 2, 3):
        med = {p: statistics.median([t for r in runs for t in r.times[stage]])
               for p, runs in results.items()}
        mem = {p: max(r.memory[stage] for r in runs) / 2**30 for p, runs in results.items()}
        lines.append(f"| {stage} | {med['32']:.3f} | {med['bf16-mixed']:.3f} | "
                     f"{med['bf16-mixed'] / med['32']:.2f} | {batch / med['32']:.1f} | "
                     f"{batch / med['bf16-mixed']:.1f} | {mem['32']:.2f} | "
                     f"{mem['bf16-mixed']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--steps", type=int, default=12, help="batches per stage")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per stage")
    parser.add_argument("--repeats", type=int, default=2, help="runs per precision")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.size == "paper" and not torch.cuda.is_available():
        print("no GPU: --size paper measures images/s and GPU memory at 384 x 128 on a CUDA "
              "device, and this machine has none (run --size cpu here)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    results: dict[str, list[StageTimer]] = {"32": [], "bf16-mixed": []}
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
            f"end; medians of "
            f"{args.repeats} x {args.steps - args.warmup} steps per stage; batch 4 ids x 4)\n\n"
            + table(args.size, results, 16))
    print(body)
    if not args.no_docs and args.size == "cpu":
        write_section(f"{SECTION}\n\n" + body + "\n")


if __name__ == "__main__":
    main()
