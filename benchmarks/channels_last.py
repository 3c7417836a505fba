"""Backbone speed in the channels-last memory format against the default layout, side by
side: the evidence behind ``Backbone.memory_format`` (MobileNetV2: channels-last; ResNet:
the default).

Two figures per backbone: a training step (forward, mean-pool + linear + cross-entropy,
backward, Adam) and feature extraction (inference mode, eval BatchNorm), images per second.
The two layouts alternate step by step on copies of one model and the same batch, so
machine noise hits both alike; the ratio of medians is the figure.

    python benchmarks/channels_last.py --threads 1                 # CPU rows' setting
    python benchmarks/channels_last.py --backbones resnet50 --height 256 --width 128 --batch 32
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

from reidlab.nn import build_backbone  # noqa: E402

SECTION = "## Channels-last backbones"


def run_in(backbone, images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """The backbone's stages on ``images`` in ``memory_format`` (the convolutions keep
    their input's and weights' layout)."""
    x = backbone.stem(images.contiguous(memory_format=memory_format))
    for name in backbone.stage_names:
        x = backbone.stage(name)(x)
    return x


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, args, device: torch.device) -> dict[str, float]:
    """Images per second of a training step and of feature extraction in each layout: one
    copy of the same initial model per layout, weights and inputs in that layout."""
    torch.manual_seed(0)
    backbone = build_backbone(name, None, 1, 1.0)
    head = torch.nn.Linear(backbone.out_channels, 100)
    images = torch.randn(args.batch, 3, args.height, args.width, device=device)
    labels = torch.randint(0, 100, (args.batch,), device=device)
    formats = {"channels_last": torch.channels_last, "default": torch.contiguous_format}
    nets = {}
    for layout, fmt in formats.items():
        net = copy.deepcopy(backbone).to(device, memory_format=fmt)
        lin = copy.deepcopy(head).to(device)
        nets[layout] = (net, lin, torch.optim.Adam([*net.parameters(), *lin.parameters()],
                                                   lr=1e-4))

    def train(layout):
        net, lin, opt = nets[layout]

        def step():
            feats = run_in(net, images, formats[layout]).mean(dim=(2, 3))
            loss = F.cross_entropy(lin(feats), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def extract(layout):
        net = nets[layout][0]

        def step():
            with torch.inference_mode():
                run_in(net, images, formats[layout])
        return step

    times = {(kind, layout): [] for kind in ("train", "extract") for layout in formats}
    for kind, make in (("train", train), ("extract", extract)):
        for net, _, _ in nets.values():
            net.train(kind == "train")
        for i in range(args.warmup + args.steps):
            order = list(formats) if i % 2 == 0 else list(reversed(formats))
            for layout in order:
                t = timed(make(layout), device)
                if i >= args.warmup:
                    times[kind, layout].append(t)
    med = {key: statistics.median(v) for key, v in times.items()}
    return {f"{kind}_{layout}": args.batch / med[kind, layout] for kind, layout in med}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-docs", action="store_true",
                        help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s), load average "
                  f"{os.getloadavg()[0]:.1f} at the start")
    lines = ["| backbone | images | train, default | train, channels-last | ratio "
             "| extract, default | extract, channels-last | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.backbones:
        r = measure(name, args, device)
        lines.append(
            f"| {name} | {args.batch} x {args.height}x{args.width} "
            f"| {r['train_default']:.1f}/s | {r['train_channels_last']:.1f}/s "
            f"| {r['train_channels_last'] / r['train_default']:.2f}x "
            f"| {r['extract_default']:.1f}/s | {r['extract_channels_last']:.1f}/s "
            f"| {r['extract_channels_last'] / r['extract_default']:.2f}x |")
        print(lines[-1], flush=True)
    command = "python benchmarks/channels_last.py " + " ".join(sys.argv[1:])
    body = (f"{SECTION}\n\nProduced by `{command.strip()}` ({where}, torch "
            f"{torch.__version__}; images per second, medians of {args.steps} steps per "
            "layout, the layouts alternating on copies of one model and one batch).\n\n"
            + "\n".join(lines) + "\n")
    print(body)
    if args.write_docs:
        write_section(body)


if __name__ == "__main__":
    main()
