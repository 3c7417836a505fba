"""How good are the first pseudo-labels? DBSCAN eps against pseudo-label quality on the
target's training set, from the ImageNet backbone, the direct-transfer model, and the
direct-transfer model with the target's BN statistics (AdaBN).

The UDA rows of ``uda_synthetic.py`` start from these features: each direct-transfer
checkpoint (kept by ``uda_synthetic.py`` in ``--ckpt-dir``) extracts the target training
set (pooled feature, as SBase's teacher at its first clustering), the k-reciprocal Jaccard
distance (k1 30, k2 6) is computed once and DBSCAN (min_samples 4) runs for every eps.
SBase and DCDFA re-estimate the target's BN statistics before their first clustering, so
their first pseudo-labels are those of the ``adabn`` features.
The data (domains, sizes, image size) are those of ``examples/configs/synthetic/
direct_transfer.yaml``. Quality is measured against the target's true ids (never
available to a UDA method), outliers counted as singletons.

    python benchmarks/pseudo_label_eps.py --seeds 0 1 2 --write-docs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from reidlab.clustering import dbscan, jaccard_distance
from reidlab.datamodules import CrossDomainDataModule
from reidlab.metrics import pseudo_label_quality
from reidlab.modules import Baseline
from reidlab.nn import reestimate_bn_statistics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from uda_synthetic import CONFIGS, DIRECTIONS, checkpoint_path, swap_domains  # noqa: E402

SECTION = "## First pseudo-labels on the synthetic pair"
KEYS = ("num_clusters", "outlier_fraction", "ari", "pair_precision", "pair_recall")
LARGEST = ("largest_images", "largest_ids")


def largest_cluster(labels: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """Images and true identities in the largest cluster: pair precision counts pairs, so
    one cluster that chains identities together dominates it."""
    if not (labels >= 0).any():
        return {"largest_images": 0.0, "largest_ids": 0.0}
    biggest = np.bincount(labels[labels >= 0]).argmax()
    members = labels == biggest
    return {"largest_images": float(members.sum()),
            "largest_ids": float(np.unique(ids[members]).size)}


def datamodule(reverse: bool) -> CrossDomainDataModule:
    config = yaml.safe_load((CONFIGS / "direct_transfer.yaml").read_text())
    data = config["data"]["init_args"]
    if reverse:
        data = swap_domains(data)
    return CrossDomainDataModule(**(data | {"num_workers": 0}))


@torch.no_grad()
def target_features(model: Baseline, dm: CrossDomainDataModule) -> tuple[torch.Tensor, np.ndarray]:
    model.eval()
    records = dm.target_data.train
    feats = [model(batch[0])["pooled"] for batch in dm.eval_dataloader(records)]
    return torch.cat(feats), np.array([r.pid for r in records])


def with_target_statistics(model: Baseline, dm: CrossDomainDataModule) -> Baseline:
    """A copy of ``model`` whose BN statistics are the target training images' (AdaBN)."""
    model = copy.deepcopy(model)
    batches = (batch[0] for batch in dm.eval_dataloader(dm.target_data.train))
    reestimate_bn_statistics(model, batches, forward=model.test_features)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eps", nargs="+", type=float, default=[0.4, 0.45, 0.5, 0.55, 0.6, 0.7])
    parser.add_argument("--ckpt-dir", type=Path,
                        default=Path.home() / ".cache" / "reidlab" / "benchmarks")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load((CONFIGS / "direct_transfer.yaml").read_text())["model"]["init_args"]
    rows = ["| direction | features | eps | seeds | clusters | outliers | ARI | pair precision "
            "| pair recall | largest cluster: images / ids |", "|---" * 10 + "|"]
    num_ids = {}
    for direction, reverse in DIRECTIONS.items():
        dm = datamodule(reverse)
        sources = {"imagenet": [Baseline(num_classes=1, **(config | {"test_feature": "pooled"}))]}
        sources["direct_transfer"] = []
        for seed in args.seeds:
            ckpt = checkpoint_path("direct_transfer", reverse, seed, args.ckpt_dir)
            if not ckpt.exists():
                print(f"skipping {ckpt}: run benchmarks/uda_synthetic.py first")
                continue
            sources["direct_transfer"].append(Baseline.load_from_checkpoint(ckpt,
                                                                            map_location="cpu"))
        sources["adabn"] = [with_target_statistics(m, dm) for m in sources["direct_transfer"]]
        for name, models in sources.items():
            stats: dict[float, list[dict]] = {eps: [] for eps in args.eps}
            for model in models:
                feats, ids = target_features(model, dm)
                num_ids[direction] = len(set(ids.tolist()))
                dist = jaccard_distance(feats, k1=30, k2=6)
                for eps in args.eps:
                    labels = dbscan(dist, eps, 4)
                    stats[eps].append(pseudo_label_quality(labels, ids) | largest_cluster(
                        labels, ids))
            for eps, runs in stats.items():
                if not runs:
                    continue
                cells = [statistics.fmean(r[k] for r in runs) for k in KEYS]
                largest = [statistics.fmean(r[k] for r in runs) for k in LARGEST]
                rows.append(f"| {direction} | {name} | {eps} | {len(runs)} | {cells[0]:.0f} | "
                            + " | ".join(f"{c:.3f}" for c in cells[1:])
                            + f" | {largest[0]:.0f} / {largest[1]:.0f} |")
    markdown = "\n".join(rows)
    print(markdown)
    if args.write_docs:
        ids = ", ".join(f"{d}: {n}" for d, n in num_ids.items())
        body = (f"{SECTION}\n\nProduced by `python benchmarks/pseudo_label_eps.py --seeds "
                f"{' '.join(map(str, args.seeds))} --write-docs`: DBSCAN (min_samples 4) on "
                "the k-reciprocal Jaccard distance (k1 30, k2 6) of pooled features of the "
                "target training set, from the ImageNet MobileNetV2 (no re-ID training, one "
                "model), from the direct-transfer Baseline of each seed and from that "
                "Baseline with the target's BN statistics (adabn; SBase / DCDFA cluster "
                "these first), against the "
                f"true ids (target identities: {ids}); means over seeds. SBase / DCDFA use "
                "eps 0.6 (the paper's).\n\n" + markdown + "\n")
        write_section(body)


if __name__ == "__main__":
    main()
