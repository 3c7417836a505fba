"""Training-step cost of DCDFA over SBase, measured side by side (paper: under 5%).

One training step = forward of the source and target batches, every loss, backward and the
Adam step, on random images with Market-sized memory and classifiers (751 source ids,
12,936 target images, 700 clusters). Data loading, clustering and the mean-teacher update
(identical in both) are left out. SBase and DCDFA steps alternate, so machine noise hits
both alike; the ratio of medians is the figure.

    python benchmarks/dcdfa_overhead.py                       # ResNet-50, 256x128, 16 + 16
    python benchmarks/dcdfa_overhead.py --batch 64 --steps 20 # the paper's batch (GPU)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from reidlab.modules import DCDFA, SBase

NUM_SOURCE_IDS, NUM_TARGET, NUM_CLUSTERS = 751, 12_936, 700


def build(cls, args, device):
    model = cls(num_classes=NUM_SOURCE_IDS, backbone=args.backbone, weights=None,
                backbone_width=args.backbone_width).to(device)
    model.build_target(NUM_TARGET)
    labels = np.arange(NUM_TARGET) % NUM_CLUSTERS
    centers = torch.randn(NUM_CLUSTERS, model.feature_dim)
    model.on_pseudo_labels(labels, centers, None)
    model.memory.init_source(torch.randn(NUM_SOURCE_IDS, model.feature_dim, device=device),
                             torch.arange(NUM_SOURCE_IDS, device=device))
    model.memory.init_target(torch.randn(NUM_TARGET, model.feature_dim, device=device))
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and not n.startswith("teacher.")]
    return model.train(), torch.optim.Adam(params, lr=3.5e-4)


def batch(args, device, gen):
    def side(num_ids):
        n = args.batch
        images = torch.randn(n, 3, args.height, args.width, generator=gen).to(device)
        pids = torch.arange(n) // args.instances % num_ids
        return images, pids.to(device), torch.zeros(n, dtype=torch.long, device=device), \
            torch.randint(0, NUM_TARGET, (n,), generator=gen).to(device)
    return {"source": side(NUM_SOURCE_IDS), "target": side(NUM_CLUSTERS)}


def step(model, opt, data, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses, _ = model.training_losses(data)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--backbone-width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=16, help="images per domain")
    parser.add_argument("--instances", type=int, default=16, help="images per identity")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    models = {"SBase": build(SBase, args, device), "SBase+DCDFA": build(DCDFA, args, device)}
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        data = batch(args, device, gen)
        order = list(models) if i % 2 == 0 else list(reversed(models))
        for name in order:
            t = step(*models[name], data, device)
            if i >= args.warmup:
                times[name].append(t)
    med = {name: statistics.median(t) for name, t in times.items()}
    overhead = med["SBase+DCDFA"] / med["SBase"] - 1
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"| setting | SBase step | SBase+DCDFA step | overhead |\n|---|---|---|---|\n"
          f"| {args.backbone} x{args.backbone_width}, {args.height}x{args.width}, "
          f"{args.batch}+{args.batch} images, {device_name}, median of {args.steps} "
          f"| {med['SBase'] * 1000:.0f} ms | {med['SBase+DCDFA'] * 1000:.0f} ms "
          f"| {100 * overhead:+.1f}% |")


if __name__ == "__main__":
    main()
