"""AIBN's cost in MobileNetV2 (layer3 + layer4 converted, as IICS does), side by side: a
training step and feature extraction with plain BatchNorm, with :class:`reidlab.nn.AIBN`,
and with the earlier AIBN forward (``torch.var`` over the flattened map, autograd through
it), kept here as the reference the speed-up is measured against.

The three networks are copies of one model, channels-last (the MobileNetV2 layout), and
run one after another, step by step in rotating order on the same batch, so machine noise
hits all alike; the ratios of medians are the figures.

    python benchmarks/aibn_speed.py --threads 1 --write-docs      # CPU rows' setting
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

from reidlab.nn import AIBN, build_backbone, convert_to_aibn  # noqa: E402

SECTION = "## AIBN speed"


def earlier_aibn_forward(self: AIBN, x: torch.Tensor) -> torch.Tensor:
    """The AIBN forward as of commit d4f3615, before the closed-form statistics, the same
    arithmetic: variance by ``torch.var``, batch variance as E[v + mu^2] - mu_bn^2."""
    n, c, h, w = x.shape
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    flat = xf.flatten(2)
    mu_in = flat.mean(-1)
    var_in = flat.var(-1, unbiased=self.unbiased and h * w > 1)
    if self.training:
        mu_bn = mu_in.mean(0)
        var_bn = (var_in + mu_in.square()).mean(0) - mu_bn.square()
        with torch.no_grad():
            count = n * h * w
            self.running_mean.lerp_(mu_bn.detach(), self.momentum)
            self.running_var.lerp_(var_bn.detach() * count / max(count - 1, 1), self.momentum)
            self.num_batches_tracked.add_(1)
    else:
        mu_bn, var_bn = self.running_mean, self.running_var
    weight = self.alpha.clamp(0, 1)
    mean = weight * mu_bn + (1 - weight) * mu_in
    var = weight * var_bn + (1 - weight) * var_in
    scale = self.weight * torch.rsqrt(var + self.eps)
    shift = self.bias - mean * scale
    return (xf * scale[..., None, None] + shift[..., None, None]).to(x.dtype)


class EarlierAIBN(AIBN):
    forward = earlier_aibn_forward


def networks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base = build_backbone("mobilenet_v2", None, 1, 1.0)
    nets = {"BatchNorm": base, "AIBN": copy.deepcopy(base), "AIBN, earlier": copy.deepcopy(base)}
    convert_to_aibn(nets["AIBN"])
    convert_to_aibn(nets["AIBN, earlier"])
    for m in nets["AIBN, earlier"].modules():
        if type(m) is AIBN:
            m.__class__ = EarlierAIBN
    return {k: v.to(memory_format=torch.channels_last) for k, v in nets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per network")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-docs", action="store_true",
                        help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (f"CPU, {torch.get_num_threads()} thread(s), load average "
             f"{os.getloadavg()[0]:.1f} at the start")
    nets = networks()
    images = torch.randn(args.batch, 3, args.height, args.width).contiguous(
        memory_format=torch.channels_last)
    head = torch.nn.Linear(1280, 100)
    labels = torch.randint(0, 100, (args.batch,))

    def features(net):
        x = net.stem(images)
        for name in net.stage_names:
            x = net.stage(name)(x)
        return x

    def train(net):
        F.cross_entropy(head(features(net).mean((2, 3))), labels).backward()

    def extract(net):
        with torch.inference_mode():
            features(net)

    medians = {}
    for kind, step in (("train", train), ("extract", extract)):
        for net in nets.values():
            net.train(kind == "train")
        times = {name: [] for name in nets}
        names = list(nets)
        for i in range(args.steps + 1):  # the first round warms up
            for name in names[i % 3:] + names[:i % 3]:
                start = time.perf_counter()
                step(nets[name])
                if i:
                    times[name].append(time.perf_counter() - start)
        medians[kind] = {name: statistics.median(t) for name, t in times.items()}
    lines = ["| step | BatchNorm | AIBN | AIBN, earlier | earlier / AIBN | AIBN / BatchNorm |",
             "|---|---|---|---|---|---|"]
    for kind, med in medians.items():
        lines.append(f"| {kind} | {med['BatchNorm']:.3f} s | {med['AIBN']:.3f} s "
                     f"| {med['AIBN, earlier']:.3f} s "
                     f"| {med['AIBN, earlier'] / med['AIBN']:.2f}x "
                     f"| {med['AIBN'] / med['BatchNorm']:.2f}x |")
    command = "python benchmarks/aibn_speed.py " + " ".join(sys.argv[1:])
    body = (f"{SECTION}\n\nProduced by `{command.strip()}` ({where}, torch "
            f"{torch.__version__}): MobileNetV2 with layer3 + layer4 in AIBN, batch "
            f"{args.batch} x {args.height}x{args.width}, channels-last; seconds per step, "
            f"medians of {args.steps} steps per network, the networks in rotating order. "
            "`train` is forward, mean pool + linear + cross-entropy, backward; `extract` "
            "is inference mode with running statistics (AIBN still computes each image's "
            "instance statistics). \"AIBN, earlier\" is the forward as of commit d4f3615 "
            "(`torch.var` over the flattened map).\n\n"
            + "\n".join(lines) + "\n")
    print(body)
    if args.write_docs:
        write_section(body)


if __name__ == "__main__":
    main()
