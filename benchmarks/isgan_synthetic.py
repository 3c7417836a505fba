"""IS-GAN's loss ablation (paper Table 2) on the synthetic domains, supervised.

Each row trains and tests on one domain (mall, street: ``examples/configs/synthetic/``
configs are written for mall, street swaps the domain names): ``isgan_stage1`` (E_R alone,
stage 1), ``isgan_ls`` (+ L_U + L_S), ``isgan_lps`` (+ L_PS) and ``isgan`` (full: + L_D +
L_C). As in the paper, the last three share their stage 1: they start from the
``isgan_stage1`` model of the same domain and seed (``pretrained``, kept in ``--ckpt-dir``
and trained first when missing) and run stages 2 and 3 only. The full model is also
evaluated on the other domain (its direct transfer). The supervised Baseline on the same
data is the ``oracle`` row of ``benchmarks/uda_synthetic.py`` (read from
``docs/benchmarks/uda_synthetic.json``: the oracle of mall -> street is trained on street).

    python benchmarks/isgan_synthetic.py --domains mall --seeds 0 --threads 1   # one process
    python benchmarks/isgan_synthetic.py --domains street --seeds 0 --threads 1 # per domain

Writes ``docs/benchmarks/isgan_synthetic.json`` (merged across invocations, each run saved
at once) and the section "## IS-GAN on the synthetic domains" of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import write_section  # noqa: E402
from uda_synthetic import METRICS, fmt, swap_domains  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs" / "synthetic"
RESULTS = ROOT / "docs" / "benchmarks" / "isgan_synthetic.json"
UDA_RESULTS = ROOT / "docs" / "benchmarks" / "uda_synthetic.json"
SECTION = "## IS-GAN on the synthetic domains"
ROWS = ("isgan_stage1", "isgan_ls", "isgan_lps", "isgan")
LABELS = {"isgan_stage1": "E_R only (stage 1)", "isgan_ls": "+ L_U + L_S",
          "isgan_lps": "+ L_PS", "isgan": "full (+ L_D + L_C)"}
DOMAINS = {"mall": False, "street": True}
# the Baseline reference: the oracle row of uda_synthetic.json trained on this domain
ORACLE_DIRECTION = {"street": "mall->street", "mall": "street->mall"}
DT_DIRECTION = {"mall": "mall->street", "street": "street->mall"}


def load_config(row: str, reverse: bool) -> dict:
    config = yaml.safe_load((CONFIGS / f"{row}.yaml").read_text())
    return swap_domains(config) if reverse else config


def stage1_path(domain: str, seed: int, ckpt_dir: Path) -> Path:
    """Named after the domain, the seed and a hash of the stage-1 config (and the generator
    version), so a stage 1 of another regime is never picked up."""
    from reidlab.datasets.synthetic import GENERATOR_VERSION

    config = (CONFIGS / "isgan_stage1.yaml").read_bytes() + str(GENERATOR_VERSION).encode()
    tag = hashlib.sha1(config).hexdigest()[:8]
    return ckpt_dir / f"isgan_stage1_{domain}_seed{seed}_{tag}.ckpt"


def run_once(row: str, domain: str, seed: int, ckpt_dir: Path, workdir: Path) -> dict:

    from reidlab.callbacks import RetrievalEvaluation
    from reidlab.cli import run_cli
    from reidlab.datamodules import ReIDDataModule

    reverse = DOMAINS[domain]
    config = load_config(row, reverse)
    model_args = config["model"]["init_args"]
    if row != "isgan_stage1":  # stages 2-3 from the shared stage 1
        stage1 = load_config("isgan_stage1", reverse)["model"]["init_args"]["stage_epochs"][0]
        first, second, third = model_args["stage_epochs"]
        if first != stage1:
            raise SystemExit(f"{row}.yaml has {first} stage-1 epochs, isgan_stage1.yaml {stage1}")
        path = stage1_path(domain, seed, ckpt_dir)
        if not path.exists():
            run_once("isgan_stage1", domain, seed, ckpt_dir, workdir / "stage1")
        model_args |= {"pretrained": str(path), "stage_epochs": [0, second, third]}
        config["trainer"]["max_epochs"] = config["trainer"]["check_val_every_n_epoch"] = (
            second + third)
    config["seed_everything"] = seed
    config["data"]["init_args"]["seed"] = seed
    config["trainer"].update(logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, default_root_dir=str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / f"{row}.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", str(cfg_path)])
    seconds = time.perf_counter() - start
    evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation))
    result = {k: evaluation.last[k] for k in METRICS} | {"seconds": seconds}
    if row == "isgan_stage1":
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        cli.trainer.save_checkpoint(stage1_path(domain, seed, ckpt_dir))
    if row == "isgan":  # direct transfer: the same model on the other domain
        other = swap_domains(config["data"]["init_args"])
        cli.trainer.validate(cli.model, datamodule=ReIDDataModule(**other), verbose=False)
        result |= {f"transfer_{k}": evaluation.last[k] for k in METRICS}
    return result


def table(results: dict) -> str:
    uda = json.loads(UDA_RESULTS.read_text()) if UDA_RESULTS.exists() else {}
    lines = ["| row | domain | seeds | mAP | rank-1 | rank-5 | rank-10 | vs Baseline (mAP) "
             "| time / run |", "|---|---|---|---|---|---|---|---|---|"]
    transfer = []
    for domain in DOMAINS:
        baseline = uda.get("oracle", {}).get(ORACLE_DIRECTION[domain], [])
        ref = statistics.fmean(r["mAP"] for r in baseline) if baseline else None
        if baseline:
            cells = [fmt([r[k] for r in baseline]) for k in METRICS]
            secs = statistics.fmean(r["seconds"] for r in baseline)
            lines.append(f"| Baseline (BoT; uda_synthetic oracle) | {domain} | {len(baseline)} | "
                         + " | ".join(cells) + f" | – | {secs:.0f} s |")
        for row in ROWS:
            runs = results.get(row, {}).get(domain)
            if not runs:
                continue
            m = statistics.fmean(r["mAP"] for r in runs)
            vs = f"{100 * (m - ref):+.1f}" if ref is not None else "–"
            cells = [fmt([r[k] for r in runs]) for k in METRICS]
            secs = statistics.fmean(r["seconds"] for r in runs)
            lines.append(f"| {LABELS[row]} | {domain} | {len(runs)} | " + " | ".join(cells)
                         + f" | {vs} | {secs:.0f} s |")
            if row == "isgan":
                dt = uda.get("direct_transfer", {}).get(DT_DIRECTION[domain], [])
                other = next(d for d in DOMAINS if d != domain)
                transfer.append(
                    f"| IS-GAN full | {domain} -> {other} | {len(runs)} | "
                    + " | ".join(fmt([r[f"transfer_{k}"] for r in runs]) for k in METRICS)
                    + " | " + (fmt([r["mAP"] for r in dt]) + f" ({len(dt)} seeds)" if dt
                               else "–") + " |")
    if transfer:
        lines += ["", "Direct transfer of the full model (trained on one domain, tested on the "
                  "other), with the Baseline's direct transfer (uda_synthetic) for reference:",
                  "", "| model | direction | seeds | mAP | rank-1 | rank-5 | rank-10 | Baseline "
                  "mAP |", "|---|---|---|---|---|---|---|---|", *transfer]
    return "\n".join(lines)


def save(row: str, domain: str, run: dict) -> dict:
    """Merge one run into the JSON file (under a lock: one invocation per domain may run
    side by side) and re-render the docs section."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "reidlab_isgan_synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        runs = [r for r in results.setdefault(row, {}).get(domain, [])
                if r["seed"] != run["seed"]]
        results[row][domain] = sorted(runs + [run], key=lambda r: r["seed"])
        RESULTS.write_text(json.dumps(results, indent=1))
        write_docs(results)
    return results


READING = """How to read it: Table 2's question is the ordering of the IS-GAN rows among
themselves (the paper's: E_R only < + L_U + L_S <= + L_PS <= full, not strictly monotone:
read it with the seed spread). The Baseline row is the BoT Baseline of `oracle.yaml`
(one global feature, 16 ids x 4 images, 16 epochs of 15 batches) on the same images; E_R is
MGN-style (8 part features, 4 ids x 4 images, 20 epochs of 40 batches), so "vs Baseline"
measures architecture and schedule, not IS-GAN's losses: on these synthetic people, whose
upper and lower clothing differ in colour and pattern, part features are strong. The
paper's Baseline row is E_R alone as well (84.1 mAP on Market-1501, against BoT's 85.9).
The same holds across domains: the full model's direct transfer (50.5 / 67.8 mAP) is far
above the BoT Baseline's (15.8 / 32.3) and level with or above the UDA rows of "Synthetic
domain pair", a sign that the BoT reference is weak on this data (issues 11-12).

Orderings, paired by seed (the rows after the first share its stage 1, so a difference
within a seed is the losses' effect): + L_U + L_S beats E_R only on every seed and domain
(+0.9 / +1.0 / +2.2 mAP on mall, +1.3 / +1.3 / +1.2 on street), the paper's main step.
+ L_PS equals + L_U + L_S within 0.03 mAP on all six runs: the part-shuffled generations
train E_U and G, and reach E_R only through stage 3 (4 epochs at lr 2e-5), which is too
short to move it here; the paper's own gain is +0.6 mAP. The full model adds +0.0 / +0.2 /
+0.1 on mall and +0.3 / -1.1 / +0.6 on street: level within the seed spread (±1.0-1.3),
as in the paper, whose Table 2 is not strictly monotone either."""


def write_docs(results: dict) -> None:
    seeds = sorted({r["seed"] for by in results.values() for runs in by.values() for r in runs})
    body = (f"{SECTION}\n\nProduced by `python benchmarks/isgan_synthetic.py --seeds "
            f"{' '.join(map(str, seeds))}` (CPU; paper Table 2 rows, supervised: trained and "
            "tested on the same domain; metrics in %, mean ± std over seeds; the rows after "
            "the first share its stage 1).\n\n" + table(results) + "\n\n" + READING + "\n")
    write_section(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ckpt-dir", type=Path,
                        default=Path.home() / ".cache" / "reidlab" / "benchmarks")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.report_only:
        write_docs(json.loads(RESULTS.read_text()))
        return
    for seed in args.seeds:
        for row in args.rows:
            for domain in args.domains:
                with tempfile.TemporaryDirectory() as tmp:
                    res = run_once(row, domain, seed, args.ckpt_dir, Path(tmp))
                print(f"{row} {domain} seed {seed}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in res.items() if isinstance(v, float)), flush=True)
                save(row, domain, res | {"seed": seed})


if __name__ == "__main__":
    main()
