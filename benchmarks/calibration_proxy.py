"""A fast, approximate loop for calibrating the synthetic presets: one Baseline-like model
trained per domain gives the oracle of its own domain, direct transfer and AdaBN to the
other, and the first clustering of each; run with the presets changed by a JSON file.

It is the Baseline's recipe (ImageNet MobileNetV2, output stride 16, BNNeck, CE with label
smoothing 0.1 + batch-hard triplet 0.3, Adam 3.5e-4 with 2 warm-up epochs, PK 16 x 4,
flip + pad-5 crop) in a plain loop over images preloaded as uint8 tensors, so one variant
costs minutes, not the half hour of the real rows; no random erasing, no LR step. Its
numbers are indicative: the reference rows of ``uda_synthetic.py`` are the measurement.
The variants tried for the current presets are in ``docs/benchmarks/calibration/``.

    python benchmarks/calibration_proxy.py --domain mall --threads 1 \\
        --overrides docs/benchmarks/calibration/variant_E.json --train-ids 250 --images-per-id 20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reidlab.clustering import dbscan, jaccard_distance
from reidlab.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidlab.datasets.synthetic import SYNTHETIC_DOMAINS, SyntheticReID
from reidlab.losses import batch_hard_triplet_loss
from reidlab.metrics import evaluate_from_features, pseudo_label_quality
from reidlab.nn import BNNeck, build_backbone, reestimate_bn_statistics

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def load(records, height: int, width: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(r.path).convert("RGB").resize(
        (width, height), Image.BILINEAR))).permute(2, 0, 1) for r in records])


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


class Net(torch.nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone("mobilenet_v2", "mobilenet_v2_imagenet", last_stride=1)
        self.neck = BNNeck(self.backbone.out_channels, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(normalise(x)).mean((2, 3))


@torch.no_grad()
def features(net: Net, x: torch.Tensor, bn: bool) -> torch.Tensor:
    net.eval()
    out = [net.pooled(x[i:i + 256]) for i in range(0, len(x), 256)]
    f = torch.cat(out)
    return F.normalize(net.neck.bn(f) if bn else f, dim=1)


def report(net: Net, data, images: dict, eps: list[float]) -> str:
    q, g = data.query, data.gallery
    res = evaluate_from_features(features(net, images["query"], True),
                                 features(net, images["gallery"], True),
                                 [r.pid for r in q], [r.pid for r in g], [r.camid for r in q],
                                 [r.camid for r in g], metric="cosine")
    ids = np.array([r.pid for r in data.train])
    dist = jaccard_distance(features(net, images["train"], False), k1=30, k2=6)
    text = f"mAP {100 * res['mAP']:.1f} r1 {100 * res['cmc'][0]:.1f} |"
    for e in eps:
        s = pseudo_label_quality(dbscan(dist, e, 4), ids)
        text += (f" eps {e}: {s['num_clusters']:.0f} clusters, ARI {s['ari']:.2f}, "
                 f"P {s['pair_precision']:.2f}, R {s['pair_recall']:.2f};")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=["mall", "street"], required=True,
                        help="the domain trained on (the other is the transfer target)")
    parser.add_argument("--overrides", type=Path, help="JSON {domain: {DomainStyle field: value}}")
    parser.add_argument("--train-ids", type=int, default=250)
    parser.add_argument("--images-per-id", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--eps", nargs="+", type=float, default=[0.5, 0.6])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--root", type=Path,
                        default=Path(tempfile.gettempdir()) / "reidlab_calibration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = json.loads(args.overrides.read_text()) if args.overrides else {}
    domains, images = {}, {}
    for name in ("mall", "street"):
        style = dataclasses.replace(SYNTHETIC_DOMAINS[name], **overrides.get(name, {}))
        domains[name] = SyntheticReID(style, args.root, num_train_ids=args.train_ids,
                                      images_per_id=args.images_per_id)
        images[name] = {split: load(getattr(domains[name], split), args.height, args.width)
                        for split in ("train", "query", "gallery")}
    source, target = args.domain, "street" if args.domain == "mall" else "mall"
    print(f"imagenet {target}: {report(Net(1), domains[target], images[target], args.eps)}")
    pids = torch.tensor([r.pid for r in domains[source].train])
    x = images[source]["train"]
    by_id = [torch.nonzero(pids == p).flatten() for p in range(int(pids.max()) + 1)]
    net = Net(len(by_id))
    opt = torch.optim.Adam(net.parameters(), lr=3.5e-4, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        for group in opt.param_groups:
            group["lr"] = 3.5e-4 * (0.1 + 0.9 * min(1.0, epoch / 2))
        order = torch.randperm(len(by_id), generator=gen)
        for step in range(len(by_id) // 16):
            idx = torch.cat([by_id[p][torch.randint(len(by_id[p]), (4,), generator=gen)]
                             for p in order[step * 16:(step + 1) * 16]])
            xb = x[idx]
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            dy, dx = torch.randint(0, 11, (2,), generator=gen).tolist()
            xb = F.pad(xb, (5, 5, 5, 5))[:, :, dy:dy + args.height, dx:dx + args.width]
            f = net.pooled(xb)
            _, logits = net.neck(f)
            loss = (F.cross_entropy(logits, pids[idx], label_smoothing=0.1)
                    + batch_hard_triplet_loss(f, pids[idx], 0.3))
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    print(f"oracle {source} ({args.epochs} epochs, {seconds:.0f} s): "
          f"{report(net, domains[source], images[source], args.eps)}")
    print(f"direct transfer {source}->{target}: "
          f"{report(net, domains[target], images[target], args.eps)}")
    xt = images[target]["train"]
    reestimate_bn_statistics(net, (xt[i:i + 128] for i in range(0, len(xt), 128)),
                             forward=lambda b: net.neck(net.pooled(b)))
    print(f"adabn {source}->{target}: {report(net, domains[target], images[target], args.eps)}")


if __name__ == "__main__":
    main()
