"""Speed and memory of IICS's two clusterings at real-dataset size.

* intra-camera: per camera, cosine distance + average-linkage agglomerative clustering into
  600 clusters;
* inter-camera: scores of every sample under every camera classifier (N x 600C), the
  score Jaccard (eq. 9) and cosine distance combined by eq. 5, built block by block into the
  condensed distance vector, then average-linkage clustering into 800 (MSMT17: 1200).

The issue's bound: the inter-camera step runs within 4 GB at Market-1501 size (12,936
samples, 6 cameras, 3,600-d scores). Features: 2048-d, from the clustered feature model of
``clustering_speed.py``; camera ids uniform over the cameras; classifier weights random
(so the scores are not uniform; the cost does not depend on them).

    python benchmarks/iics_clustering.py                    # Market size, CPU
    python benchmarks/iics_clustering.py --case msmt        # MSMT17 size (use a GPU)
    python benchmarks/iics_clustering.py --write-docs

Results accumulate in docs/benchmarks/iics_clustering.json; ``--write-docs`` (re)writes the
section "## IICS clustering" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clustering_speed import make_features  # noqa: E402
from docs_section import write_section  # noqa: E402
from eval_speed import PeakRSS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks" / "iics_clustering.json"
SECTION = "## IICS clustering"
CASES = {  # samples, cameras, clusters per camera, inter-camera clusters
    "market": (12936, 6, 600, 800),
    "msmt": (32621, 15, 600, 1200),
    "small": (3000, 6, 200, 300),  # a quick check
}


def cdist_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The score Jaccard's L1 before the CPU kernel: ``torch.cdist`` on every device."""
    return torch.cdist(a[None], b[None], p=1)[0]


def run(case: str, device: str, chunk_size: int, compare: bool) -> dict:
    from sklearn.metrics import adjusted_rand_score

    import reidlab.clustering.scores as scores
    from reidlab.modules import IICS

    n, cams, per_camera, inter = CASES[case]
    feats, _ = make_features(n)
    feats = feats.relu()  # pooled features are non-negative
    camids = np.random.default_rng(0).integers(0, cams, n)
    sizes = np.bincount(camids, minlength=cams)
    model = IICS(backbone="resnet50", weights=None, chunk_size=chunk_size,
                 inter_clusters=inter).to(device)
    model.build_heads(range(cams), np.minimum(sizes, per_camera), inter)
    gen = torch.Generator().manual_seed(0)
    for clf in model.camera_classifiers:
        clf.weight.data.copy_(torch.randn(clf.weight.shape, generator=gen) * 0.05)
    result = {"case": case, "n": n, "cameras": cams, "score_dim": int(sum(
        c.out_features for c in model.camera_classifiers)), "device": device,
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or "cpu"}
    with PeakRSS() as mem:
        start = time.perf_counter()
        intra = model.intra_camera_labels(feats, camids)
        result["intra_seconds"] = time.perf_counter() - start
    result["intra_peak_gb"] = mem.extra / 2**30
    result["intra_clusters"] = int(len(np.unique(intra)))
    with PeakRSS() as mem:
        start = time.perf_counter()
        labels = model.inter_camera_labels(feats, camids, rnd=0, progress=True)
        result["inter_seconds"] = time.perf_counter() - start
    result["inter_peak_gb"] = mem.extra / 2**30
    result["inter_clusters"] = int(len(np.unique(labels)))
    if compare:  # the same input through torch.cdist, side by side
        kernel, scores.l1_distances = scores.l1_distances, cdist_l1
        try:
            with PeakRSS() as mem:
                start = time.perf_counter()
                reference = model.inter_camera_labels(feats, camids, rnd=0, progress=True)
                result["cdist_inter_seconds"] = time.perf_counter() - start
        finally:
            scores.l1_distances = kernel
        result["cdist_inter_peak_gb"] = mem.extra / 2**30
        result["ari_vs_cdist"] = float(adjusted_rand_score(reference, labels))
    return result


def write_docs(results: dict) -> None:
    lines = [SECTION, "", "Produced by `python benchmarks/iics_clustering.py [--case msmt] "
             "--compare-cdist` (2048-d synthetic features, random classifier weights; peak "
             "memory = growth of the process's resident memory during the step; load = the "
             "1-minute load average at the end). Bounds from the issue: the inter-camera step "
             "within 4 GB and (CPU, 2 cores) 60 s at Market-1501 size, with the same labels "
             "as before. Its cost is almost all the score Jaccard's L1 distances (N^2/2 x "
             "score dims, 3 x 10^11 operations at Market size): on the CPU a compiled "
             "blocked kernel (`reidlab.clustering.scores.l1_distances`, numba), on a GPU "
             "`torch.cdist`. The `cdist` columns run the same input through `torch.cdist` "
             "(the code before the kernel) in the same process: time, the speed-up and the "
             "adjusted Rand index of the two labelings.", "",
             "| case | samples | cameras | score dims | device | intra: time | intra: peak "
             "| inter: time | inter: peak | inter with cdist | speed-up | ARI vs cdist "
             "| load | conditions |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        if "cdist_inter_seconds" in r:
            cdist = (f"{r['cdist_inter_seconds']:.1f} s | "
                     f"{r['cdist_inter_seconds'] / r['inter_seconds']:.1f}x | "
                     f"{r['ari_vs_cdist']:.4f}")
        else:
            cdist = "- | - | -"
        lines.append(f"| {r['case']} | {r['n']:,} | {r['cameras']} | {r['score_dim']:,} | "
                     f"{r['device']} ({r['torch_threads']} threads) | {r['intra_seconds']:.1f} s"
                     f" | {r['intra_peak_gb']:.2f} GB | {r['inter_seconds']:.1f} s | "
                     f"{r['inter_peak_gb']:.2f} GB | {cdist} | "
                     f"{r.get('load_avg', float('nan')):.1f} | {r.get('note', '')} |")
    write_section("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=list(CASES), default="market")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--note", default="", help="measuring conditions, shown in the table")
    parser.add_argument("--compare-cdist", action="store_true",
                        help="also run the inter-camera step with torch.cdist (the code before "
                             "the CPU kernel): time ratio and ARI of the two labelings")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result = run(args.case, args.device, args.chunk_size, args.compare_cdist) | {
        "note": args.note, "load_avg": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    results[f"{args.case}/{args.device}"] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    if args.write_docs:
        write_docs(results)


if __name__ == "__main__":
    main()
