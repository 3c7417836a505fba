"""What the GAN cost benchmarks (isgan_speed.py, dgnet_speed.py) share: a per-phase step
timer with peak memory, fp32 / bf16-mixed runs alternated, and the table and docs section.
A phase is a stage (IS-GAN) or a round type (DG-Net++), given by a function of the module."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from eval_speed import PeakRSS  # noqa: E402

PRECISIONS = ("32", "bf16-mixed")


class PhaseTimer(pl.Callback):
    """Per phase (``phase(pl_module)``, read at each epoch start): step durations after
    ``warmup`` steps of the epoch, and peak memory (GPU allocator, or the process's RSS)."""

    def __init__(self, phase: Callable[[pl.LightningModule], int], warmup: int,
                 cuda: bool) -> None:
        self.phase, self.warmup, self.cuda = phase, warmup, cuda
        self.times: dict[int, list[float]] = {}
        self.memory: dict[int, int] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.current = self.phase(pl_module)
        self.times[self.current] = []
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
            self.times[self.current].append(time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.cuda:
            self.memory[self.current] = torch.cuda.max_memory_allocated()
        else:
            self.rss.__exit__(None, None, None)
            self.memory[self.current] = self.rss.peak


def cost_table(label: str, phases: dict[int, str], results: dict[str, list[PhaseTimer]],
               batch: int, cuda: bool) -> str:
    """Median s/step, the bf16 / fp32 ratio, images / s and peak memory per phase."""
    unit = "GPU memory (GiB)" if cuda else "peak RSS (GiB)"
    lines = [f"| {label} | fp32 s/step | bf16 s/step | bf16 / fp32 | fp32 img/s | bf16 img/s | "
             f"fp32 {unit} | bf16 {unit} |", "|---|---|---|---|---|---|---|---|"]
    for key, name in phases.items():
        med = {p: statistics.median([t for r in runs for t in r.times[key]])
               for p, runs in results.items()}
        mem = {p: max(r.memory[key] for r in runs) / 2**30 for p, runs in results.items()}
        lines.append(f"| {name} | {med['32']:.3f} | {med['bf16-mixed']:.3f} | "
                     f"{med['bf16-mixed'] / med['32']:.2f} | {batch / med['32']:.1f} | "
                     f"{batch / med['bf16-mixed']:.1f} | {mem['32']:.2f} | "
                     f"{mem['bf16-mixed']:.2f} |")
    return "\n".join(lines)


def arguments(doc: str, steps: int, what: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--steps", type=int, default=steps, help=f"batches per {what}")
    parser.add_argument("--warmup", type=int, default=2, help=f"untimed batches per {what}")
    parser.add_argument("--repeats", type=int, default=2, help="runs per precision")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-docs", action="store_true")
    return parser


def cpu_description() -> str:
    """The CPU's model name and whether it has native bf16 (AVX-512 BF16 / AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "CPU")
    native = any(flag in info for flag in ("avx512_bf16", "amx_bf16"))
    return f"{name}, {'with' if native else 'without'} native bf16"


def measure(args: argparse.Namespace, run: Callable[..., PhaseTimer], label: str,
            phases: dict[int, str], batch: int, batch_note: str, section: str,
            paper_note: str, notes: str = "") -> None:
    """Alternate fp32 and bf16 runs ``args.repeats`` times, print the table and (CPU size)
    write it, after ``notes``, into ``section`` of docs/benchmarks.md. ``run(size, precision,
    steps, warmup, workdir)`` is one fit. Without a GPU, ``--size paper`` prints
    ``paper_note`` and stops."""
    if args.size == "paper" and not torch.cuda.is_available():
        print(f"no GPU: --size paper {paper_note}, and this machine has none (run --size cpu "
              "here)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "offline")
    results: dict[str, list[PhaseTimer]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for precision in results:
                results[precision].append(run(args.size, precision, args.steps, args.warmup,
                                              workdir))
    cuda = args.size == "paper"
    device = (torch.cuda.get_device_name() if cuda
              else f"{cpu_description()}, {torch.get_num_threads()} threads")
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    load = os.getloadavg()[0]
    body = (f"`{command}` ({device}; {os.cpu_count()} cores, load average {load:.1f} at the "
            f"end; medians of {args.repeats} x {args.steps - args.warmup} steps per "
            f"{label}; {batch_note})\n\n" + (notes + "\n\n" if notes else "")
            + cost_table(label, phases, results, batch, cuda))
    print(body)
    if not args.no_docs and not cuda:
        write_section(f"{section}\n\n" + body + "\n")
