"""Accuracy of methods on the synthetic domain pair, both directions, several seeds.

Each row is a config in ``examples/configs/synthetic/`` written for the mall -> street
direction; the street -> mall direction swaps the two domain names everywhere in the data
arguments. Every run is ``reidlab fit`` in-process; the final validation metrics (on the
target's query + gallery) are collected from the RetrievalEvaluation callback.

    python benchmarks/uda_synthetic.py --rows imagenet direct_transfer adabn oracle --seeds 0 1 2
    python benchmarks/uda_synthetic.py --rows direct_transfer --seeds 0 --epochs 2   # smoke
    python benchmarks/uda_synthetic.py --rows base base_mb base_mean_net sbase sbase_dcdfa

The reference rows: ``imagenet`` (the ImageNet backbone, no re-ID training: the lower
bound), ``direct_transfer`` (the Baseline trained on the source), ``adabn`` (the
direct-transfer model with its BatchNorm statistics re-estimated on the target's training
images, nothing else trained: the reference every UDA row must beat) and ``oracle`` (the
Baseline trained on the target's labels). ``imagenet`` and ``adabn`` train nothing: they
run ``reidlab validate``. Rows whose model has ``pretrained: null`` (SBase, DCDFA, ARN)
and ``adabn`` start from the direct-transfer Baseline of the same direction and seed, and
``teacher: null`` (DG-Net, DG-Net++) is that Baseline too; DG-Net++'s ``pretrained`` is
the ``dgnet`` row's checkpoint (:data:`PRETRAINED_ROW`). These checkpoints are kept in
``--ckpt-dir`` and trained first when missing.

Writes a markdown table (mAP, rank-1/5/10 as mean +- std over seeds, wall time per run)
to stdout, to ``docs/benchmarks/uda_synthetic.json`` (raw numbers, with the pseudo-label
quality of every re-clustering, merged across invocations) and into the section "##
Synthetic domain pair" of ``docs/benchmarks.md``; the pseudo-label quality figure of each
clustering run goes to ``docs/benchmarks/pseudo_quality/``.
The "gap closed" column is (method - direct transfer) / (oracle - direct transfer) in mAP,
"vs adabn" the method's mAP minus adabn's (mean over seeds). Every run keeps a hash of its
config (:func:`config_hash`); a row with runs of an earlier config is marked "(stale)".
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs" / "synthetic"
RESULTS = ROOT / "docs" / "benchmarks" / "uda_synthetic.json"
FIGURES = ROOT / "docs" / "benchmarks" / "pseudo_quality"  # pseudo-label quality per run
FIGURES_ON = [True]  # False with --no-docs
SECTION = "## Synthetic domain pair"
DIRECTIONS = {"mall->street": False, "street->mall": True}
METRICS = ("mAP", "rank1", "rank5", "rank10")
# rows that train nothing: `reidlab validate`, from the config's weights (None) or from the
# direct-transfer checkpoint of the same direction and seed
VALIDATE_ROWS = {"imagenet": None, "adabn": "direct_transfer"}
REFERENCE_ROWS = ("imagenet", "direct_transfer", "adabn", "oracle")
# the row whose checkpoint a model's `pretrained: null` means (by model class; default:
# the direct-transfer Baseline), and the rows whose checkpoints are kept
PRETRAINED_ROW = {"reidlab.modules.DGNetPP": "dgnet"}
CHECKPOINT_ROWS = ("direct_transfer", "dgnet")


def swap_domains(value):
    """Swap synthetic:mall and synthetic:street in every string of a config tree."""
    if isinstance(value, dict):
        return {k: swap_domains(v) for k, v in value.items()}
    if isinstance(value, list):
        return [swap_domains(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"synthetic:(mall|street)",
                      lambda m: "synthetic:" + ("street" if m.group(1) == "mall" else "mall"),
                      value)
    return value


def start_rows(row: str, config: dict) -> dict[str, str]:
    """The model arguments (and ``ckpt_path`` for a validate row) that the row fills with
    another row's checkpoint: ``{argument: row}``."""
    if VALIDATE_ROWS.get(row):
        return {"ckpt_path": VALIDATE_ROWS[row]}
    model = config.get("model", {})
    model_args = model.get("init_args") or {}
    starts = {}
    if "pretrained" in model_args and not model_args["pretrained"]:
        starts["pretrained"] = PRETRAINED_ROW.get(model.get("class_path"), "direct_transfer")
    if "teacher" in model_args and not model_args["teacher"]:
        starts["teacher"] = "direct_transfer"
    return starts


def config_tag(row: str) -> bytes:
    """The row's config and those of the checkpoints it starts from."""
    text = (CONFIGS / f"{row}.yaml").read_bytes()
    starts = start_rows(row, yaml.safe_load(text) or {})
    return text + b"".join(config_tag(dep) for dep in sorted(set(starts.values())))


def config_hash(row: str) -> str | None:
    """A hash of the row's configs and the generator version (None without a config): kept
    with every run, so the table can tell runs of an earlier config from current ones."""
    from reidlab.datasets.synthetic import GENERATOR_VERSION

    if not (CONFIGS / f"{row}.yaml").exists():
        return None
    return hashlib.sha1(config_tag(row) + str(GENERATOR_VERSION).encode()).hexdigest()[:8]


def checkpoint_path(row: str, reverse: bool, seed: int, ckpt_dir: Path) -> Path:
    """Named after the row, the direction, the seed and :func:`config_hash`, so a
    checkpoint of another regime is never picked up."""
    direction = next(d for d, r in DIRECTIONS.items() if r == reverse)
    return ckpt_dir / f"{row}_{direction.replace('->', '_to_')}_seed{seed}_{config_hash(row)}.ckpt"


def row_checkpoint(row: str, reverse: bool, seed: int, ckpt_dir: Path) -> Path:
    """The checkpoint of a :data:`CHECKPOINT_ROWS` row for one direction and seed, trained
    when missing."""
    path = checkpoint_path(row, reverse, seed, ckpt_dir)
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            run_once(row, reverse, seed, None, Path(tmp), ckpt_dir)
    return path


def direct_transfer_checkpoint(reverse: bool, seed: int, ckpt_dir: Path) -> Path:
    """The direct-transfer Baseline of one direction and seed, trained when missing."""
    return row_checkpoint("direct_transfer", reverse, seed, ckpt_dir)


def run_once(row: str, reverse: bool, seed: int, epochs: int | None, workdir: Path,
             ckpt_dir: Path) -> dict:

    from reidlab.callbacks import PseudoLabeling, RetrievalEvaluation
    from reidlab.cli import run_cli

    config = yaml.safe_load((CONFIGS / f"{row}.yaml").read_text())
    if reverse:
        config["data"] = swap_domains(config["data"])
    starts = start_rows(row, config)
    model_args = config["model"].setdefault("init_args", {})
    for argument, source in starts.items():
        if argument != "ckpt_path":
            model_args[argument] = str(row_checkpoint(source, reverse, seed, ckpt_dir))
    config["seed_everything"] = seed
    config.setdefault("data", {}).setdefault("init_args", {})["seed"] = seed
    trainer_cfg = config.setdefault("trainer", {})
    trainer_cfg.update(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       default_root_dir=str(workdir))
    if epochs is not None:
        trainer_cfg["max_epochs"] = epochs
    path = workdir / f"{row}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = ["fit", "--config", str(path)]
    if row in VALIDATE_ROWS:
        command[0] = "validate"
        if VALIDATE_ROWS[row] is None:  # the config's initial weights, on purpose
            command += ["--allow_untrained", "true"]
        if "ckpt_path" in starts:
            command += ["--ckpt_path", str(row_checkpoint(starts["ckpt_path"], reverse, seed,
                                                          ckpt_dir))]
    start = time.perf_counter()
    cli = run_cli(command)
    seconds = time.perf_counter() - start
    if row in CHECKPOINT_ROWS and epochs is None:  # the start of other rows
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        cli.trainer.save_checkpoint(checkpoint_path(row, reverse, seed, ckpt_dir))
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation))
    result = {k: evaluation.last[k] for k in METRICS} | {"seconds": seconds,
                                                         "config": config_hash(row)}
    labeler = next((c for c in cli.trainer.callbacks if isinstance(c, PseudoLabeling)), None)
    if labeler is not None and labeler.history:  # quality of the last pseudo-labels
        last = labeler.history[-1]
        result |= {f"pseudo_{k}": last[k] for k in ("ari", "num_clusters", "outlier_fraction")
                   if k in last}
        result["pseudo_history"] = labeler.history
        if "ari" in last and FIGURES_ON[0]:  # the figure of every run, for the docs
            import matplotlib.pyplot as plt

            FIGURES.mkdir(parents=True, exist_ok=True)
            fig = labeler.quality_figure()
            direction = "street_to_mall" if reverse else "mall_to_street"
            fig.suptitle(f"{row}, {direction.replace('_to_', ' -> ')}, seed {seed}", fontsize=9)
            fig.savefig(FIGURES / f"{row}_{direction}_seed{seed}.png", dpi=80)
            plt.close(fig)
    return result


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def is_stale(row: str, runs: list[dict]) -> bool:
    """Some of ``runs`` were made with another version of the row's config (runs saved
    before hashes were kept count as current)."""
    current = config_hash(row)
    return any(r.get("config", current) != current for r in runs)


def table(results: dict) -> str:
    """Reference rows first, then the methods in the order they were first run; "gap
    closed" against direct transfer and the oracle, "vs adabn" in mAP points; rows with
    runs of an earlier config are marked "(stale)"."""
    lines = ["| method | direction | seeds | mAP | rank-1 | rank-5 | rank-10 | gap closed "
             "| vs adabn | time / run |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = [r for r in REFERENCE_ROWS if r in results] + [
        r for r in results if r not in REFERENCE_ROWS]
    for direction in DIRECTIONS:
        mean_map = {r: statistics.fmean(x["mAP"] for x in runs)
                    for r in ("direct_transfer", "oracle", "adabn")
                    if (runs := results.get(r, {}).get(direction))}
        for row in order:
            runs = results[row].get(direction)
            if not runs:
                continue
            m = statistics.fmean(x["mAP"] for x in runs)
            gap = vs_adabn = "–"
            if {"direct_transfer", "oracle"} <= set(mean_map) and row not in (
                    "direct_transfer", "oracle"):
                denom = mean_map["oracle"] - mean_map["direct_transfer"]
                gap = f"{(m - mean_map['direct_transfer']) / denom:.2f}"
            if "adabn" in mean_map and row not in REFERENCE_ROWS:
                vs_adabn = f"{100 * (m - mean_map['adabn']):+.1f}"
            cells = [fmt([x[k] for x in runs]) for k in METRICS]
            secs = statistics.fmean(x["seconds"] for x in runs)
            name = f"{row} (stale)" if is_stale(row, runs) else row
            lines.append(f"| {name} | {direction} | {len(runs)} | " + " | ".join(cells)
                         + f" | {gap} | {vs_adabn} | {secs:.0f} s |")
    gaps = [f"{d}: {100 * (m['oracle'] - m['direct_transfer']):.1f}" for d in DIRECTIONS
            if len(m := {r: statistics.fmean(x["mAP"] for x in results[r][d])
                         for r in ("direct_transfer", "oracle") if d in results.get(r, {})}) == 2]
    if any(is_stale(row, runs) for row in results for runs in results[row].values()):
        lines += ["", "(stale): some of the row's runs were made with an earlier version of "
                  "its config (or of the generator); re-run them."]
    if gaps:
        lines += ["", "Domain gap, oracle minus direct transfer (mAP points): " + "; ".join(gaps)
                  + "."]
    return "\n".join(lines)


def write_docs(markdown: str, command: str) -> None:
    body = (f"{SECTION}\n\nProduced by `{command}` (CPU, this repository's configs in "
            "`examples/configs/synthetic/`; metrics in %, mean ± std over seeds, evaluated "
            "on the target domain's query + gallery).\n\n" + markdown + "\n")
    write_section(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["direct_transfer", "oracle"],
                        help="config names in examples/configs/synthetic/")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--directions", nargs="+", default=list(DIRECTIONS),
                        choices=list(DIRECTIONS))
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs (smoke)")
    parser.add_argument("--ckpt-dir", type=Path,
                        default=Path.home() / ".cache" / "reidlab" / "benchmarks",
                        help="where the direct-transfer checkpoints are kept")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 per process when running directions side by side)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render the table from the saved results, run nothing")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    FIGURES_ON[0] = not args.no_docs
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.no_docs else {}
    if args.report_only and not args.no_docs:
        write_docs_table(results)
    # seed-major order, each run saved at once: an interrupted invocation keeps what it
    # finished, whole seeds first
    for seed in [] if args.report_only else args.seeds:
        for row in args.rows:
            for direction in args.directions:
                with tempfile.TemporaryDirectory() as tmp:
                    res = run_once(row, DIRECTIONS[direction], seed, args.epochs, Path(tmp),
                                   args.ckpt_dir)
                print(f"{row} {direction} seed {seed}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in res.items() if isinstance(v, float)), flush=True)
                if args.no_docs:
                    add_run(results, row, direction, res | {"seed": seed})
                else:
                    results = save(row, direction, res | {"seed": seed})
    print(table(results))


def add_run(results: dict, row: str, direction: str, run: dict) -> None:
    runs = [r for r in results.setdefault(row, {}).get(direction, [])
            if r["seed"] != run["seed"]]
    results[row][direction] = sorted(runs + [run], key=lambda r: r["seed"])


def save(row: str, direction: str, run: dict) -> dict:
    """Merge one run into the JSON file (under a lock: several invocations, e.g. one per
    direction, may run side by side) and re-render the table in docs/benchmarks.md."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "reidlab_uda_synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        add_run(results, row, direction, run)
        RESULTS.write_text(json.dumps(results, indent=1))
        write_docs_table(results)
    return results


def write_docs_table(results: dict) -> None:
    seeds = sorted({r["seed"] for by_dir in results.values() for runs in by_dir.values()
                    for r in runs})
    command = (f"python benchmarks/uda_synthetic.py --rows {' '.join(results)} --seeds "
               + " ".join(map(str, seeds)))
    write_docs(table(results), command)


if __name__ == "__main__":
    main()
