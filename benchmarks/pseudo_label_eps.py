"""How good are the first pseudo-labels? DBSCAN eps against pseudo-label quality on the
direct-transfer features of the synthetic target, both directions.

The UDA rows of ``uda_synthetic.py`` start from these features: each direct-transfer
checkpoint (kept by ``uda_synthetic.py`` in ``--ckpt-dir``) extracts the target training
set (pooled feature, as SBase's teacher at its first clustering), the k-reciprocal Jaccard
distance (k1 30, k2 6) is computed once and DBSCAN (min_samples 4) runs for every eps.
Quality is measured against the target's true ids (never available to a UDA method).

    python benchmarks/pseudo_label_eps.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from reidlab.clustering import dbscan, jaccard_distance
from reidlab.datamodules import CrossDomainDataModule
from reidlab.metrics import pseudo_label_quality
from reidlab.modules import Baseline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

SECTION = "## First pseudo-labels on the synthetic pair"
DIRECTIONS = {"mall->street": ("synthetic:mall", "synthetic:street"),
              "street->mall": ("synthetic:street", "synthetic:mall")}
SIZE = {"num_train_ids": 100, "num_test_ids": 100, "images_per_id": 16}


@torch.no_grad()
def target_features(ckpt: Path, source: str, target: str) -> tuple[torch.Tensor, np.ndarray]:
    model = Baseline.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = CrossDomainDataModule(source, target, source_kwargs=SIZE, target_kwargs=SIZE,
                               height=64, width=32, num_workers=0)
    records = dm.target_data.train
    feats = [model(batch[0])["pooled"] for batch in dm.eval_dataloader(records)]
    return torch.cat(feats), np.array([r.pid for r in records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eps", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--ckpt-dir", type=Path,
                        default=Path.home() / ".cache" / "reidlab" / "benchmarks")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    keys = ("num_clusters", "outlier_fraction", "ari", "pair_precision", "pair_recall")
    rows = ["| direction | eps | seeds | clusters | outliers | ARI | pair precision "
            "| pair recall |", "|---|---|---|---|---|---|---|---|"]
    for direction, (source, target) in DIRECTIONS.items():
        stats: dict[float, list[dict]] = {eps: [] for eps in args.eps}
        for seed in args.seeds:
            name = f"direct_transfer_{direction.replace('->', '_to_')}_seed{seed}.ckpt"
            ckpt = args.ckpt_dir / name
            if not ckpt.exists():
                print(f"skipping {ckpt}: run benchmarks/uda_synthetic.py first")
                continue
            feats, ids = target_features(ckpt, source, target)
            dist = jaccard_distance(feats, k1=30, k2=6)
            for eps in args.eps:
                stats[eps].append(pseudo_label_quality(dbscan(dist, eps, 4), ids))
        for eps, runs in stats.items():
            if not runs:
                continue
            cells = [statistics.fmean(r[k] for r in runs) for k in keys]
            rows.append(f"| {direction} | {eps} | {len(runs)} | {cells[0]:.0f} | "
                        + " | ".join(f"{c:.3f}" for c in cells[1:]) + " |")
    markdown = "\n".join(rows)
    print(markdown)
    if args.write_docs:
        body = (f"{SECTION}\n\nProduced by `python benchmarks/pseudo_label_eps.py --seeds "
                f"{' '.join(map(str, args.seeds))} --write-docs`: DBSCAN (min_samples 4) on "
                "the k-reciprocal Jaccard distance (k1 30, k2 6) of the direct-transfer "
                "model's pooled features of the target training set (100 ids x 16 images), "
                "against the true ids; means over seeds. SBase / DCDFA use eps 0.6 (the "
                "paper's).\n\n" + markdown + "\n")
        write_section(body)


if __name__ == "__main__":
    main()
