"""How the cost of evaluation, Jaccard + DBSCAN clustering and re-ranking grows with N.

For each N of ``--sizes`` and each step, one subprocess (so peak memory is per run) on the
synthetic features of ``eval_speed.py`` (evaluation, re-ranking: N/8 queries, 7N/8 gallery,
2048-d, euclidean; re-ranking k1 20, k2 6, lambda 0.3, streamed into the evaluation) and of
``clustering_speed.py`` (clustering: N features, k1 30, k2 6, exact search, DBSCAN eps 0.6);
time and peak RSS (the whole process). Each run is appended at once to
``docs/benchmarks/scaling.json``; ``--figure`` draws the log-log figure
``docs/benchmarks/scaling.png`` with the exponent of a power law fitted per step on the
largest half of the sizes, and writes the table into "## Scaling with N" of
docs/benchmarks.md with what the fit predicts for MSMT17 (93,820) and 200,000 images.

    python benchmarks/scaling.py --threads 2                  # 2k .. 32k, every step
    python benchmarks/scaling.py --sizes 64000 93820 --steps evaluation reranking
    python benchmarks/scaling.py --figure                     # figure + docs only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "scaling.json"
FIGURE = ROOT / "docs" / "benchmarks" / "scaling.png"
SECTION = "## Scaling with N"
STEPS = ("evaluation", "clustering", "reranking")
PREDICT = (93_820, 200_000)


def features(n: int):
    """Query / gallery features and ids of eval_speed.py's model at N = n images."""
    import torch
    from eval_speed import DIM, NOISE

    nq = max(1, n // 8)
    ng = n - nq
    g = torch.Generator().manual_seed(0)
    n_ids = max(2, n // 30)
    centres = torch.randn(n_ids, DIM, generator=g) / DIM**0.5
    q_pids = torch.randint(0, n_ids, (nq,), generator=g)
    g_pids = torch.randint(0, n_ids, (ng,), generator=g)
    q_cams = torch.randint(0, 6, (nq,), generator=g)
    g_cams = torch.randint(0, 6, (ng,), generator=g)

    def feats(pids):
        out = torch.empty(len(pids), DIM)
        for s in range(0, len(pids), 4096):
            p = pids[s: s + 4096]
            noise = torch.randn(len(p), DIM, generator=g).mul_(NOISE / DIM**0.5)
            out[s: s + 4096] = noise.add_(centres[p])
        return out

    return feats(q_pids), feats(g_pids), q_pids, g_pids, q_cams, g_cams


def worker(step: str, n: int, threads: int) -> dict:
    import torch
    from eval_speed import PeakRSS

    torch.set_num_threads(threads)
    if step == "clustering":
        from clustering_speed import EPS, K1, K2, MIN_SAMPLES, make_features

        from reidlab.clustering import dbscan, jaccard_distance

        data = make_features(n)[0]

        def run():
            dbscan(jaccard_distance(data, k1=K1, k2=K2, search="exact"), eps=EPS,
                   min_samples=MIN_SAMPLES)
    else:
        from reidlab.metrics import evaluate_from_features

        data = features(n)

        def run():
            evaluate_from_features(*data, rerank=step == "reranking")
    with PeakRSS() as mem:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    return {"step": step, "n": n, "seconds": seconds, "peak_gb": mem.peak / 1e9,
            "extra_gb": mem.extra / 1e9,
            "threads": threads, "load_avg": os.getloadavg()[0]}


def fit(runs: list[dict], key: str) -> tuple[float, float]:
    """Exponent and constant of ``key = c * N^a`` on the largest half of the sizes."""
    runs = sorted(runs, key=lambda r: r["n"])
    runs = runs[min(len(runs) // 2, len(runs) - 2):]
    slope, intercept = np.polyfit(np.log([r["n"] for r in runs]),
                                  np.log([r[key] for r in runs]), 1)
    return float(slope), float(np.exp(intercept))


def report(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from docs_section import write_section

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    rows = []
    for step in STEPS:
        runs = sorted((r for r in results if r["step"] == step), key=lambda r: r["n"])
        if len(runs) < 2:
            continue
        cells = []
        for ax, key, unit in ((axes[0], "seconds", "s"), (axes[1], "extra_gb", "GB")):
            a, c = fit(runs, key)
            n = [r["n"] for r in runs]
            ax.loglog(n, [r[key] for r in runs], "o-", label=f"{step} (N^{a:.2f})")
            cells.append(f"N^{a:.2f}")
            cells += [f"{c * p**a:.3g} {unit}" for p in PREDICT]
        largest = runs[-1]
        rows.append(f"| {step} | {runs[0]['n']:,} .. {largest['n']:,} | "
                    f"{largest['seconds']:.1f} s, {largest['peak_gb']:.2f} GB | "
                    + " | ".join(cells) + " |")
    for ax, title in zip(axes, ("time (s)", "memory the step adds (GB)"), strict=True):
        ax.set_xlabel("N (images)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=90)
    threads = sorted({r["threads"] for r in results})
    loads = [r["load_avg"] for r in results]
    text = [SECTION, "",
            f"`python benchmarks/scaling.py --threads {threads[0]}` (N = 2,000 .. 32,000), "
            f"then `--sizes 64000 93820 --steps evaluation reranking`: each step at each N in "
            f"its own process, {', '.join(map(str, threads))} threads, 1-minute load average "
            f"{min(loads):.1f}-{max(loads):.1f} over the runs. Evaluation and re-ranking: N/8 "
            "queries against 7N/8 gallery images (2048-d); clustering: the k-reciprocal "
            "Jaccard distance of all N (k1 30, exact neighbours) + DBSCAN. Peak memory is "
            "the whole process at the largest N; the memory columns and the figure are what the "
            "step adds to the process (peak minus the resident set before it). Exponents are "
            "fitted on the larger half of the sizes; the time / memory at 93,820 and 200,000 "
            "extrapolate the fit.", "",
            "![scaling](benchmarks/scaling.png)", "",
            "| step | N measured | at the largest N | time ~ | time at 93,820 | time at 200,000 "
            "| memory added ~ | at 93,820 | at 200,000 |",
            "|---|---|---|---|---|---|---|---|---|", *rows]
    write_section("\n".join(text) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2000, 4000, 8000, 16000, 32000])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figure", action="store_true", help="only draw the figure and docs")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads)))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if not args.figure:
        for n in args.sizes:
            for step in args.steps:
                out = subprocess.run([sys.executable, __file__, "--worker", step, str(n),
                                      "--threads", str(args.threads)], check=True,
                                     capture_output=True, text=True).stdout
                run = json.loads(out.strip().splitlines()[-1])
                print(run, flush=True)
                results = [r for r in results if (r["step"], r["n"]) != (step, n)] + [run]
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report(results)


if __name__ == "__main__":
    main()
