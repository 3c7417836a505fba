"""The UDA table seed by seed, and whether each of the papers' ablation orderings holds.

Reads ``docs/benchmarks/uda_synthetic.json`` (written by ``uda_synthetic.py``) and, for
every method row, gives per seed: mAP, the share of the direct-transfer -> oracle gap it
closes (against that seed's direct transfer and oracle) and its distance to that seed's
``adabn``. For every ordering the papers claim ("A > B" in an ablation table) it says
whether A beats B on every seed both were run with, on the mean only, or not at all.

    python benchmarks/uda_readings.py               # print
    python benchmarks/uda_readings.py --write-docs  # and (re)write its docs section
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from uda_synthetic import DIRECTIONS, REFERENCE_ROWS, RESULTS, is_stale  # noqa: E402

SECTION = "## UDA rows seed by seed, and the papers' orderings"

# (better, worse): what each paper's ablation table claims, in its row names here
ORDERINGS: dict[str, list[tuple[str, str]]] = {
    "SBase Table 1": [("base_mb", "base"), ("base_mean_net", "base"),
                      ("sbase", "base_mb"), ("sbase", "base_mean_net")],
    "DCDFA Table 2": [("sbase_dcdfa", "sbase"), ("sbase_dcdfa", "sbase_dcdfa_b")],
    "DCDFA Table 3": [("sbase_dcdfa_cid", "sbase"),
                      ("sbase_dcdfa_cid_domain", "sbase_dcdfa_cid"),
                      ("sbase_dcdfa", "sbase_dcdfa_cid_domain")],
    "ARN Table 2": [("arn", "arn_no_private"), ("arn_no_private", "arn_no_source"),
                    ("arn_no_source", "arn_rec_only")],
    "IICS Table 1": [("iics_cnn", "iics_stage1"), ("iics", "iics_cnn")],
    "IICS Table 2": [("iics_aibn_fixed", "iics_no_aibn"), ("iics", "iics_aibn_fixed"),
                     ("iics", "iics_in")],
    "domain-specific BN (DSBN / SpCL)": [("sbase", "sbase_shared_bn"), ("arn", "arn_shared_bn")],
}


def by_seed(results: dict, row: str, direction: str, key: str = "mAP") -> dict[int, float]:
    return {r["seed"]: r[key] for r in results.get(row, {}).get(direction, [])}


def verdict(better: dict[int, float], worse: dict[int, float]) -> str | None:
    """Whether ``better`` > ``worse`` holds on every common seed, on the mean only, or not;
    None when they share no seed."""
    seeds = sorted(better.keys() & worse.keys())
    if not seeds:
        return None
    holds_on = [s for s in seeds if better[s] > worse[s]]
    if len(holds_on) == len(seeds):
        return "every seed"
    on = f" (holds on seed {', '.join(map(str, holds_on))})" if holds_on else ""
    if statistics.fmean(better[s] for s in seeds) > statistics.fmean(worse[s] for s in seeds):
        return "on the mean only" + on
    return "does not hold" + on


def per_seed_table(results: dict) -> str:
    lines = ["| row | direction | mAP per seed | mean | gap closed per seed | vs adabn per seed "
             "| slowest run |", "|---|---|---|---|---|---|---|"]
    rows = [r for r in results if r not in REFERENCE_ROWS]
    for direction in DIRECTIONS:
        dt, oracle, adabn = (by_seed(results, r, direction)
                             for r in ("direct_transfer", "oracle", "adabn"))
        for row in rows:
            maps = by_seed(results, row, direction)
            if not maps:
                continue
            seeds = sorted(maps)
            gap = [f"{(maps[s] - dt[s]) / (oracle[s] - dt[s]):.2f}" if s in dt and s in oracle
                   else "–" for s in seeds]
            vs = [f"{100 * (maps[s] - adabn[s]):+.1f}" if s in adabn else "–" for s in seeds]
            slowest = max(by_seed(results, row, direction, "seconds").values())
            name = f"{row} (stale)" if is_stale(row, results[row][direction]) else row
            lines.append(
                f"| {name} | {direction} | " + " / ".join(f"{100 * maps[s]:.1f}" for s in seeds)
                + f" (seeds {', '.join(map(str, seeds))}) | "
                f"{100 * statistics.fmean(maps.values()):.1f} | {' / '.join(gap)} | "
                f"{' / '.join(vs)} | {slowest:.0f} s |")
    return "\n".join(lines)


def orderings_table(results: dict) -> str:
    lines = ["| paper | ordering | mall->street | street->mall |", "|---|---|---|---|"]
    for paper, pairs in ORDERINGS.items():
        for better, worse in pairs:
            cells = []
            for direction in DIRECTIONS:
                a, b = by_seed(results, better, direction), by_seed(results, worse, direction)
                result = verdict(a, b)
                if result is None:
                    cells.append("not run")
                    continue
                seeds = sorted(a.keys() & b.keys())
                diffs = " / ".join(f"{100 * (a[s] - b[s]):+.1f}" for s in seeds)
                cells.append(f"{result}: {diffs}")
            lines.append(f"| {paper} | {better} > {worse} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict) -> str:
    return (f"{SECTION}\n\nProduced by `python benchmarks/uda_readings.py --write-docs` from "
            "`docs/benchmarks/uda_synthetic.json` (the table of \"Synthetic domain pair\"). "
            "mAP in %, per seed; gap closed against the same seed's direct transfer and "
            "oracle; vs adabn in mAP points against the same seed's adabn.\n\n"
            + per_seed_table(results)
            + "\n\nThe papers' ablation orderings, \"A > B\": whether A's mAP is above B's on "
            "every seed both rows were run with, on the mean of those seeds only, or not; "
            "then A - B per seed, in mAP points.\n\n" + orderings_table(results) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-docs", action="store_true",
                        help=f"(re)write the section {SECTION!r} of docs/benchmarks.md")
    args = parser.parse_args()
    text = report(json.loads(RESULTS.read_text()))
    print(text)
    if args.write_docs:
        write_section(text)


if __name__ == "__main__":
    main()
