"""Speed and memory of pseudo-label clustering: k-reciprocal Jaccard distance + DBSCAN.

Cases (each runs in its own subprocess so that peak memory is measured per case), all with
2048-d features, k1=30, k2=6, DBSCAN eps=0.6, min_samples=4 (SBase / SpCL settings):

* ``market``: N = 12,936 (Market-1501 train), exact neighbour search.
* ``msmt``: N = 32,621 (MSMT17 train), exact neighbour search.
* ``large_approx``: N = 100,000, approximate neighbour search (NN-descent).
* ``large_exact``: N = 100,000, exact search: the reference for ``large_approx``'s labels
  (adjusted Rand index between the two clusterings of the same features).
* ``market_low_contrast`` / ``msmt_low_contrast``: as market / msmt on low-contrast features
  (below), where the Jaccard matrix is 20x denser.

Features are synthetic, with the structure that makes re-ID clustering hard: about 17 images
per identity, identities in look-alike groups of 6, a per-camera bias, a shared low-rank
nuisance (pose / background) and isotropic noise, hard images (part of another identity mixed
in: occlusion) and 5% distractor images of no identity. DBSCAN then finds clusters, merges
some look-alikes and leaves outliers; the ARI against the true ids counts outliers and
distractors as singletons. The "low-contrast" model has weaker look-alike groups, a stronger
nuisance and no hard images: beyond its own identity a point's neighbours are nearly
equidistant, which spreads the k-reciprocal sets (and defeats NN-descent, see ``knn``).

Usage::

    python benchmarks/clustering_speed.py                          # market, msmt
    python benchmarks/clustering_speed.py --cases large_approx,large_exact
    python benchmarks/clustering_speed.py --cases all --write-docs   # about 20 minutes

Results accumulate in ``--results`` (JSON, labels next to it); ``--write-docs`` (re)writes the
section "## Clustering speed" of docs/benchmarks.md from all results collected there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from eval_speed import PeakRSS  # noqa: E402

SECTION = "## Clustering speed"
CASES = {  # N, neighbour search, feature model
    "market": (12936, "exact", "clustered"),
    "msmt": (32621, "exact", "clustered"),
    "large_approx": (100_000, "approx", "clustered"),
    "large_exact": (100_000, "exact", "clustered"),
    "market_low_contrast": (12936, "exact", "low_contrast"),
    "msmt_low_contrast": (32621, "exact", "low_contrast"),
}
TARGETS = {  # time, peak RSS
    "market": ("<= 30 s", "<= 2 GB"),
    "msmt": ("<= 120 s", "<= 4 GB"),
    "large_approx": ("<= 600 s", None),
    "market_low_contrast": ("<= 30 s", "<= 2 GB"),
    "msmt_low_contrast": ("<= 120 s", "<= 4 GB"),
}
DIM = 2048
K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4
PER_ID, N_CAMS, GROUP, RANK, DISTRACTORS = 17, 6, 6, 32, 0.05
MODELS = {  # weights relative to a unit identity vector; hard: fraction, share of the other id
    "clustered": dict(group=1.2, cam=0.78, nuisance=1.0, noise=0.8, hard=(0.10, 0.45)),
    "low_contrast": dict(group=0.7, cam=0.78, nuisance=1.25, noise=0.8, hard=(0.0, 0.0)),
}


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def make_features(
    n: int, model: str = "clustered", seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Features (n, DIM) and true ids (-1 = distractor), generated in chunks."""
    w = MODELS[model]
    g = torch.Generator().manual_seed(seed)
    n_ids = int(n * (1 - DISTRACTORS)) // PER_ID
    groups = torch.randn(max(1, n_ids // GROUP), DIM, generator=g)
    group_of = torch.randint(0, len(groups), (n_ids,), generator=g)
    ids = (w["group"] * groups[group_of] + torch.randn(n_ids, DIM, generator=g)) / DIM**0.5
    cams = w["cam"] * torch.randn(N_CAMS, DIM, generator=g) / DIM**0.5
    basis = w["nuisance"] * torch.linalg.qr(torch.randn(DIM, RANK, generator=g))[0]
    pid = torch.randint(0, n_ids, (n,), generator=g)
    pid[torch.rand(n, generator=g) < DISTRACTORS] = -1
    cam = torch.randint(0, N_CAMS, (n,), generator=g)
    # Hard images (occlusion by another person): part of another identity mixed in.
    frac, share = w["hard"]
    mix = torch.where(torch.rand(n, generator=g) < frac, share, 0.0)
    other = torch.randint(0, n_ids, (n,), generator=g)
    out = torch.empty(n, DIM)
    for s in range(0, n, 4096):
        p, c, a = pid[s : s + 4096], cam[s : s + 4096], mix[s : s + 4096, None]
        m = len(p)
        alone = torch.randn(m, DIM, generator=g) * (1 + w["group"] ** 2) ** 0.5 / DIM**0.5
        x = torch.where((p >= 0)[:, None], ids[p.clamp_min(0)], alone)
        x = (1 - a) * x + a * ids[other[s : s + 4096]]
        x += cams[c]
        x += (torch.randn(m, RANK, generator=g) / RANK**0.5) @ basis.T
        x += w["noise"] * torch.randn(m, DIM, generator=g) / DIM**0.5
        out[s : s + m] = x
    return out, pid.numpy()


def singletons(labels: np.ndarray) -> np.ndarray:
    """Labels with every -1 (outlier / distractor) made a cluster of its own."""
    out = labels.astype(np.int64).copy()
    neg = out < 0
    out[neg] = out.max(initial=0) + 1 + np.arange(neg.sum())
    return out


# ------------------------------------------------------------------------------------------
# Worker: one case
# ------------------------------------------------------------------------------------------


def run_case(case: str, threads: int, labels_path: str) -> dict:
    from sklearn.metrics import adjusted_rand_score

    import reidlab.clustering.jaccard as jac_mod
    from reidlab.clustering import dbscan, jaccard_distance

    torch.set_num_threads(threads)
    n, search, model = CASES[case]
    feats, pid = make_features(n, model)
    # Time the steps inside jaccard_distance by wrapping them where it looks them up.
    steps: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
            return out

        return wrapper

    for name in ("knn", "k_reciprocal_vectors", "_jaccard_from_vectors"):
        setattr(jac_mod, name, timed(name, getattr(jac_mod, name)))

    res: dict = {
        "case": case,
        "n": n,
        "search": search,
        "features": model,
        "dim": DIM,
        "threads": torch.get_num_threads(),
        "load_avg_before": os.getloadavg()[0],
    }
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        dist = jaccard_distance(feats, k1=K1, k2=K2, search=search)
        t1 = time.perf_counter()
        labels = dbscan(dist, eps=EPS, min_samples=MIN_SAMPLES)
        t2 = time.perf_counter()
    np.save(labels_path, labels)
    res.update(
        time_s=t2 - t0,
        jaccard_s=t1 - t0,
        knn_s=steps["knn"],
        v_s=steps["k_reciprocal_vectors"],
        pairs_s=steps["_jaccard_from_vectors"],
        dbscan_s=t2 - t1,
        baseline_rss_gb=mem.base / 1e9,
        peak_rss_gb=mem.peak / 1e9,
        extra_peak_gb=mem.extra / 1e9,
        ru_maxrss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        entries_per_row=dist.nnz / n,
        clusters=int(labels.max() + 1),
        outlier_frac=float((labels < 0).mean()),
        true_ids=int(len(np.unique(pid[pid >= 0]))),
        ari_true=float(adjusted_rand_score(singletons(pid), singletons(labels))),
    )
    return res


# ------------------------------------------------------------------------------------------
# Driver: subprocess per case, JSON results, markdown table
# ------------------------------------------------------------------------------------------


def table(results: dict, commands: list[str]) -> str:
    lines = [
        SECTION,
        "",
        f"k-reciprocal Jaccard distance (k1={K1}, k2={K2}) + DBSCAN (eps={EPS}, "
        f"min_samples={MIN_SAMPLES}) on synthetic {DIM}-d features, CPU, each case in its own "
        "process. The features mimic re-ID embeddings (see the script's docstring): "
        f"~{PER_ID} images per identity, look-alike identity groups, camera bias, a shared "
        f"low-rank nuisance, noise, {DISTRACTORS:.0%} distractors; *clustered*: distinct "
        "look-alike groups and 10% hard (occluded) images; *low contrast*: beyond its own "
        "identity a point's neighbours are nearly equidistant, which makes the Jaccard matrix "
        "~20x denser. Time = `jaccard_distance` + `dbscan` (data generation excluded), split "
        "into neighbour search, k-reciprocal vectors V, pairwise min-sums (building the CSR "
        "matrix) and DBSCAN; the sparse steps run on one thread, the neighbour search on the "
        "listed torch threads. Peak RSS = the worker's `ru_maxrss` (whole process: Python, "
        "torch, the features); extra = sampled peak minus the RSS just before the call. The "
        "machine has 2 cores shared with other jobs (load avg: 1-minute load when the case "
        "started), so times are noisy. ARI: adjusted Rand index of the DBSCAN labels against "
        "the true identities, outliers and distractors as singletons.",
        "",
        "| case | features | N | search | time (s) | target | neighbours / V / pair sums / "
        "DBSCAN (s) | peak RSS (GB) | extra (GB) | memory target | J entries per row "
        "| clusters (ids) | outliers | ARI vs ids | threads | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        r = results.get(case)
        if r is None:
            continue
        t_target, m_target = TARGETS.get(case, (None, None))
        split = " / ".join(f"{r[k]:.1f}" for k in ("knn_s", "v_s", "pairs_s", "dbscan_s"))
        lines.append(
            f"| {case} | {r['features'].replace('_', ' ')} | {r['n']:,} | {r['search']} | "
            f"{r['time_s']:.1f} | {t_target or '-'} | "
            f"{split} | {r['ru_maxrss_gb']:.2f} | {r['extra_peak_gb']:.2f} | "
            f"{m_target or '-'} | {r['entries_per_row']:,.0f} | {r['clusters']:,} "
            f"({r['true_ids']:,}) | {r['outlier_frac']:.1%} | {r['ari_true']:.3f} | "
            f"{r['threads']} | {r['load_avg_before']:.1f} |"
        )
    if "ari_approx_vs_exact" in results.get("large_approx", {}):
        lines += [
            "",
            "Approximate vs exact neighbour search on the same 100,000 features: adjusted Rand "
            "index between the two DBSCAN labelings = "
            f"{results['large_approx']['ari_approx_vs_exact']:.4f} (outliers as singletons).",
        ]
    lines += ["", "Commands:", "", "```"] + commands + ["```", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--cases",
        default="market,msmt",
        help=f"comma-separated subset of {','.join(CASES)} (or 'all')",
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--results", default=os.path.join(tempfile.gettempdir(), "reidlab_clustering_speed.json")
    )
    p.add_argument(
        "--write-docs", action="store_true", help=f"rewrite the '{SECTION}' section of docs"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    labels_path = {c: f"{os.path.splitext(args.results)[0]}_{c}_labels.npy" for c in CASES}

    if args.worker:
        res = run_case(args.worker, args.threads, labels_path[args.worker])
        Path(args.worker_out).write_text(json.dumps(res))
        return

    cases = list(CASES) if args.cases == "all" else [c for c in args.cases.split(",") if c]
    results = json.loads(Path(args.results).read_text()) if os.path.exists(args.results) else {}
    commands = results.pop("_commands", [])
    cmd = "python benchmarks/clustering_speed.py " + " ".join(sys.argv[1:])
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {list(CASES)}")
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            sub = [sys.executable, __file__, "--worker", case, "--worker-out", f.name]
            sub += ["--threads", str(args.threads), "--results", args.results]
            subprocess.run(sub, check=True)
            results[case] = json.loads(Path(f.name).read_text())
        print(json.dumps(results[case], indent=1), flush=True)
    if {"large_approx", "large_exact"} <= results.keys() and (
        {"large_approx", "large_exact"} & set(cases)
    ):
        from sklearn.metrics import adjusted_rand_score

        approx = np.load(labels_path["large_approx"])
        exact = np.load(labels_path["large_exact"])
        results["large_approx"]["ari_approx_vs_exact"] = float(
            adjusted_rand_score(singletons(exact), singletons(approx))
        )
    if cases and cmd not in commands:
        commands.append(cmd)
    Path(args.results).write_text(json.dumps({**results, "_commands": commands}, indent=1))
    text = table(results, commands)
    print(text)
    if args.write_docs:
        write_section(text)


if __name__ == "__main__":
    main()
