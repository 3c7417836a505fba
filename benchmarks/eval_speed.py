"""Speed and memory of reidlab's retrieval evaluation (and re-ranking) at dataset sizes.

Cases (each runs in its own subprocess so that peak memory is measured per case):

* ``market``: Market-1501 size (3,368 queries x 15,913 gallery, 2048-d), evaluated from
  features, and side by side torchreid 0.2.5's Python evaluator (``eval_market1501``) on the
  same distance matrix: both must give the same mAP / CMC; the speed ratio is reported.
  The torchreid sdist is downloaded at run time (``pip download``) into a temporary folder and
  ``torchreid/reid/metrics/rank.py`` is loaded from there as a standalone module.
* ``msmt``: MSMT17 size (11,659 x 82,161) from features.
* ``market_rerank`` / ``msmt_rerank``: k-reciprocal re-ranked evaluation (k1=20, k2=6,
  lambda=0.3) from features at Market (19,281 images) / MSMT17 (93,820 images) size.

Features are synthetic with identity structure: unit-scale identity centres + camera shift +
Gaussian noise, so rankings are realistic (reported mAP), and distances are tie-free.

Usage::

    python benchmarks/eval_speed.py                      # market, msmt, market_rerank
    python benchmarks/eval_speed.py --cases msmt_rerank  # the slow one
    python benchmarks/eval_speed.py --cases market --write-docs

Results accumulate in ``--results`` (JSON); ``--write-docs`` (re)writes the section
"## Retrieval evaluation speed" of docs/benchmarks.md from all results collected there.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

SECTION = "## Retrieval evaluation speed"

SIZES = {  # queries, gallery, identities, cameras, distractor gallery images (pid 0)
    "market": (3368, 15913, 750, 6, 2798),
    "msmt": (11659, 82161, 3060, 15, 0),
}
CASES = {
    "market": ("market", False),
    "msmt": ("msmt", False),
    "market_rerank": ("market", True),
    "msmt_rerank": ("msmt", True),
}
TARGETS = {  # seconds, GB (extra peak for plain evaluation, total peak for re-ranking)
    "market": ("<= 3 s", None),
    "msmt": (None, "<= 4 GB extra"),
    "market_rerank": ("<= 60 s", "<= 3 GB"),
    "msmt_rerank": (None, "<= 12 GB"),
}
DIM = 2048
NOISE = 2.7


# ------------------------------------------------------------------------------------------
# Data and memory measurement
# ------------------------------------------------------------------------------------------


def make_data(size: str, seed: int = 0):
    """Identity-structured random features (generated in chunks: no large temporaries)."""
    nq, ng, n_ids, n_cams, n_distract = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids + 1, DIM, generator=g) / DIM**0.5
    cams = 0.5 * torch.randn(n_cams, DIM, generator=g) / DIM**0.5
    q_pids = torch.randint(1, n_ids + 1, (nq,), generator=g)
    g_pids = torch.randint(1, n_ids + 1, (ng,), generator=g)
    g_pids[:n_distract] = 0  # distractors: an identity no query has
    q_cams = torch.randint(0, n_cams, (nq,), generator=g)
    g_cams = torch.randint(0, n_cams, (ng,), generator=g)

    def feats(pids, camids):
        out = torch.empty(len(pids), DIM)
        for s in range(0, len(pids), 4096):
            p, c = pids[s : s + 4096], camids[s : s + 4096]
            noise = torch.randn(len(p), DIM, generator=g).mul_(NOISE / DIM**0.5)
            out[s : s + 4096] = noise.add_(centres[p]).add_(cams[c])
        return out

    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while the block runs: a sampling thread (every 2 ms) combined with
    ``getrusage``'s lifetime maximum when that grew inside the block."""

    def __enter__(self) -> PeakRSS:
        self.base = rss_bytes()
        self.ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if ru > self.ru_before:
            self.peak = max(self.peak, ru)
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.base


# ------------------------------------------------------------------------------------------
# torchreid reference (downloaded at run time, never vendored)
# ------------------------------------------------------------------------------------------


def load_torchreid_rank(tmp: str):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "torchreid==0.2.5",
            "-d",
            tmp,
        ],
        check=True,
    )
    (sdist,) = glob.glob(os.path.join(tmp, "torchreid-0.2.5*.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = next(
            m
            for m in tar.getmembers()
            if m.name.endswith(("reid/metrics/rank.py", "torchreid/metrics/rank.py"))
        )
        tar.extract(member, tmp, filter="data")
    spec = importlib.util.spec_from_file_location(
        "torchreid_rank_025", os.path.join(tmp, member.name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its Cython import fails -> pure Python evaluator
    return module


# ------------------------------------------------------------------------------------------
# Worker: one case
# ------------------------------------------------------------------------------------------


def run_case(case: str, repeats: int, with_torchreid: bool) -> dict:
    from reidlab.metrics.functional import (
        evaluate_from_features,
        evaluate_rank,
        pairwise_distance,
    )

    size, rerank = CASES[case]
    qf, gf, q_pids, g_pids, q_cams, g_cams = make_data(size)
    ids = (q_pids, g_pids, q_cams, g_cams)
    res: dict = {
        "case": case,
        "queries": len(qf),
        "gallery": len(gf),
        "dim": DIM,
        "threads": torch.get_num_threads(),
        "load_avg_before": os.getloadavg()[0],
    }
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = evaluate_from_features(qf, gf, *ids, rerank=rerank)
        res["time_s"] = time.perf_counter() - t0
    res.update(
        baseline_rss_gb=mem.base / 1e9,
        peak_rss_gb=mem.peak / 1e9,
        extra_peak_gb=mem.extra / 1e9,
        mAP=out["mAP"],
        rank1=float(out["cmc"][0]),
        mINP=out["mINP"],
    )
    if rerank:
        plain = evaluate_from_features(qf, gf, *ids)
        res.update(plain_mAP=plain["mAP"], plain_rank1=float(plain["cmc"][0]))
    if case == "market" and with_torchreid:
        with tempfile.TemporaryDirectory() as tmp:
            tr = load_torchreid_rank(tmp)
        np_ids = [x.numpy() for x in ids]
        t_feat, t_dist, t_ours, t_tr = [res["time_s"]], [], [], []
        for _ in range(repeats):  # interleaved, so machine load hits both alike
            t0 = time.perf_counter()
            evaluate_from_features(qf, gf, *ids)
            t_feat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            distmat = pairwise_distance(qf, gf).numpy()
            t_dist.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = evaluate_rank(distmat, *np_ids, max_rank=50)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cmc_tr, map_tr = tr.evaluate_rank(
                distmat, *np_ids, max_rank=50, use_metric_cuhk03=False, use_cython=False
            )
            t_tr.append(time.perf_counter() - t0)
        # Agreement also on a float64 matrix: float32 distances contain exact ties, which
        # torchreid's (unstable) argsort and our stable order may break differently.
        d64 = pairwise_distance(qf.double(), gf.double()).numpy()
        ours64 = evaluate_rank(d64, *np_ids, max_rank=50)
        cmc64, map64 = tr.evaluate_rank(
            d64, *np_ids, max_rank=50, use_metric_cuhk03=False, use_cython=False
        )
        res.update(
            f64_diff_mAP=abs(float(map64) - ours64["mAP"]),
            f64_diff_cmc=float(np.abs(np.asarray(cmc64) - ours64["cmc"]).max()),
        )
        med = float(np.median(t_ours)), float(np.median(t_tr))
        res.update(
            time_s=float(np.median(t_feat)),
            dist_s=float(np.median(t_dist)),
            eval_distmat_s=med[0],
            torchreid_s=med[1],
            ratio_eval=med[1] / med[0],
            ratio_end_to_end=(float(np.median(t_dist)) + med[1]) / float(np.median(t_feat)),
            torchreid_mAP=float(map_tr),
            max_abs_diff_mAP=abs(float(map_tr) - ours["mAP"]),
            max_abs_diff_cmc=float(np.abs(np.asarray(cmc_tr) - ours["cmc"]).max()),
            repeats=repeats,
        )
    return res


# ------------------------------------------------------------------------------------------
# Driver: subprocess per case, JSON results, markdown table
# ------------------------------------------------------------------------------------------


def table(results: dict, commands: list[str]) -> str:
    lines = [
        SECTION,
        "",
        "Synthetic 2048-d features with identity structure (identity centre + camera shift + "
        "noise), euclidean distance, Market-1501 protocol, CPU (torch threads as listed), "
        "each case in its own process. Peak RSS is the whole process (Python, torch, the "
        "features); extra = peak minus the RSS just before the evaluation call. The machine "
        "has 2 cores shared with other jobs (load avg: 1-minute load when the case started), "
        "so absolute times are noisy; the torchreid ratios are measured side by side.",
        "",
        "| case | queries x gallery | time (s) | target | peak RSS (GB) | extra peak (GB) "
        "| memory target | mAP | rank-1 | mINP | threads | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        r = results.get(case)
        if r is None:
            continue
        t_target, m_target = TARGETS[case]
        name = case + (" (re-ranked)" if CASES[case][1] else "")
        lines.append(
            f"| {name} | {r['queries']:,} x {r['gallery']:,} | {r['time_s']:.2f} | "
            f"{t_target or '-'} | {r['peak_rss_gb']:.2f} | {r['extra_peak_gb']:.2f} | "
            f"{m_target or '-'} | {r['mAP']:.4f} | {r['rank1']:.4f} | {r['mINP']:.4f} | "
            f"{r['threads']} | {r['load_avg_before']:.1f} |"
        )
    m = results.get("market", {})
    if "torchreid_s" in m:
        lines += [
            "",
            f"Side by side at Market size (median of {m['repeats']} interleaved runs, same "
            "process, same distance matrix):",
            "",
            "| step | reidlab | torchreid 0.2.5 (Python `eval_market1501`) | ratio |",
            "|---|---|---|---|",
            f"| evaluation of the 3,368 x 15,913 distance matrix | {m['eval_distmat_s']:.3f} s "
            f"| {m['torchreid_s']:.2f} s | {m['ratio_eval']:.0f}x |",
            f"| from features (reidlab: chunked distances + evaluation; torchreid: full "
            f"distance matrix {m['dist_s']:.2f} s + evaluation) | {m['time_s']:.2f} s | "
            f"{m['dist_s'] + m['torchreid_s']:.2f} s | {m['ratio_end_to_end']:.1f}x |",
            "",
            f"Agreement with torchreid (mAP {m['torchreid_mAP']:.6f}): on the float32 matrix "
            f"|mAP difference| = {m['max_abs_diff_mAP']:.1e}, max |CMC difference| = "
            f"{m['max_abs_diff_cmc']:.1e}; on the float64 matrix of the same features "
            f"{m.get('f64_diff_mAP', float('nan')):.1e} and "
            f"{m.get('f64_diff_cmc', float('nan')):.1e}. (float32 distances contain exact ties, "
            "which torchreid's unstable argsort and reidlab's stable order break differently; "
            "torchreid returns its CMC in float32.)",
        ]
    rr = [c for c in ("market_rerank", "msmt_rerank") if c in results]
    if rr:
        lines += [
            "",
            "Re-ranking (k1=20, k2=6, lambda=0.3) effect on the synthetic data: "
            + "; ".join(
                f"{c}: mAP {results[c]['plain_mAP']:.4f} -> {results[c]['mAP']:.4f}" for c in rr
            )
            + ".",
        ]
    lines += ["", "Commands:", "", "```"] + commands + ["```", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--cases",
        default="market,msmt,market_rerank",
        help=f"comma-separated subset of {','.join(CASES)} (or 'all')",
    )
    p.add_argument("--repeats", type=int, default=3, help="timing repeats of the comparison")
    p.add_argument("--no-torchreid", action="store_true", help="skip the torchreid comparison")
    p.add_argument(
        "--results", default=os.path.join(tempfile.gettempdir(), "reidlab_eval_speed.json")
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help=f"rewrite the '{SECTION}' section of docs/benchmarks.md",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        res = run_case(args.worker, args.repeats, not args.no_torchreid)
        Path(args.worker_out).write_text(json.dumps(res))
        return

    cases = list(CASES) if args.cases == "all" else [c for c in args.cases.split(",") if c]
    results = json.loads(Path(args.results).read_text()) if os.path.exists(args.results) else {}
    commands = results.pop("_commands", [])
    cmd = "python benchmarks/eval_speed.py " + " ".join(sys.argv[1:])
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {list(CASES)}")
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            sub = [
                sys.executable,
                __file__,
                "--worker",
                case,
                "--worker-out",
                f.name,
                "--repeats",
                str(args.repeats),
            ] + (["--no-torchreid"] * args.no_torchreid)
            t0 = time.perf_counter()
            subprocess.run(sub, check=True)
            res = json.loads(Path(f.name).read_text())
        res["wall_incl_data_s"] = time.perf_counter() - t0
        results[case] = res
        print(json.dumps(res, indent=1), flush=True)
    if cases and cmd not in commands:
        commands.append(cmd)
    Path(args.results).write_text(json.dumps({**results, "_commands": commands}, indent=1))
    text = table(results, commands)
    print(text)
    if args.write_docs:
        write_section(text)


if __name__ == "__main__":
    main()
