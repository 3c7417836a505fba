"""The benchmark scripts' bookkeeping (not their numbers)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import uda_synthetic  # noqa: E402


def _run(seed, config=None):
    run = {"mAP": 0.5, "rank1": 0.6, "rank5": 0.7, "rank10": 0.8, "seconds": 1.0, "seed": seed}
    return run if config is None else run | {"config": config}


def test_the_table_marks_rows_with_runs_of_an_earlier_config(tmp_path, monkeypatch):
    monkeypatch.setattr(uda_synthetic, "CONFIGS", tmp_path)
    for row in ("same", "changed", "legacy"):
        (tmp_path / f"{row}.yaml").write_text(f"model: {{class_path: {row}}}\n")
    current = uda_synthetic.config_hash("changed")
    results = {"same": {"mall->street": [_run(0, uda_synthetic.config_hash("same"))]},
               "changed": {"mall->street": [_run(0, current), _run(1, "0123abcd")]},
               "legacy": {"mall->street": [_run(0)]}}  # saved before hashes were kept
    lines = uda_synthetic.table(results).splitlines()
    assert any(line.startswith("| changed (stale) |") for line in lines)
    assert any(line.startswith("| same |") for line in lines)
    assert any(line.startswith("| legacy |") for line in lines)
    assert lines[-1].startswith("(stale): ")
    (tmp_path / "changed.yaml").write_text("model: {class_path: edited}\n")  # the config moves on
    assert uda_synthetic.config_hash("changed") != current
    del results["changed"]
    assert "(stale)" not in uda_synthetic.table(results)


def test_a_row_is_stale_when_the_checkpoint_it_starts_from_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(uda_synthetic, "CONFIGS", tmp_path)
    (tmp_path / "direct_transfer.yaml").write_text("model: {class_path: Baseline}\n")
    (tmp_path / "student.yaml").write_text(
        "model: {class_path: SBase, init_args: {pretrained: null}}\n")
    (tmp_path / "adabn.yaml").write_text("model: {class_path: Baseline}\n")
    (tmp_path / "scratch.yaml").write_text(
        "model: {class_path: SBase, init_args: {pretrained: some.ckpt}}\n")
    rows = ("student", "adabn", "scratch")
    before = {row: uda_synthetic.config_hash(row) for row in rows}
    (tmp_path / "direct_transfer.yaml").write_text("model: {class_path: Baseline}\n# longer\n")
    after = {row: uda_synthetic.config_hash(row) for row in rows}
    assert after["student"] != before["student"]  # pretrained: null is the Baseline's checkpoint
    assert after["adabn"] != before["adabn"]  # validates the Baseline's checkpoint
    assert after["scratch"] == before["scratch"]  # its own checkpoint
    results = {row: {"mall->street": [_run(0, before[row])]} for row in rows}
    stale = {line.split(" |")[0][2:] for line in uda_synthetic.table(results).splitlines()
             if "(stale)" in line and line.startswith("| ")}
    assert stale == {"student (stale)", "adabn (stale)"}


def test_largest_cluster_counts_its_images_and_true_ids():
    import numpy as np
    from pseudo_label_eps import largest_cluster

    labels = np.array([2, 2, 2, 2, 0, 0, -1, -1, -1])  # outliers (-1) are not a cluster
    ids = np.array([7, 7, 8, 9, 7, 7, 1, 1, 1])
    assert largest_cluster(labels, ids) == {"largest_images": 4.0, "largest_ids": 3.0}
    assert largest_cluster(np.full(3, -1), ids[:3]) == {"largest_images": 0.0, "largest_ids": 0.0}


def test_readings_say_whether_an_ordering_holds_on_every_seed_the_mean_or_not():
    from uda_readings import verdict

    assert verdict({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}) == "every seed"
    assert verdict({0: 0.9, 1: 0.4}, {0: 0.5, 1: 0.5}) == "on the mean only (holds on seed 0)"
    assert verdict({0: 0.6, 1: 0.1, 2: 0.2}, {0: 0.5, 1: 0.5, 2: 0.5}) == (
        "does not hold (holds on seed 0)")
    assert verdict({0: 0.4}, {0: 0.5}) == "does not hold"
    assert verdict({0: 0.4, 2: 0.9}, {0: 0.3, 1: 0.9}) == "every seed"  # common seeds only
    assert verdict({0: 0.4}, {1: 0.3}) is None


def test_readings_measure_each_seed_against_its_own_direct_transfer_oracle_and_adabn(
        tmp_path, monkeypatch):
    from uda_readings import per_seed_table

    monkeypatch.setattr(uda_synthetic, "CONFIGS", tmp_path)
    for row in ("direct_transfer", "oracle", "adabn", "method"):
        (tmp_path / f"{row}.yaml").write_text(f"model: {{class_path: {row}}}\n")

    def runs(*maps):
        return {"mall->street": [_run(s) | {"mAP": m} for s, m in enumerate(maps)]}

    results = {"direct_transfer": runs(0.2, 0.4), "oracle": runs(0.8, 0.9),
               "adabn": runs(0.5, 0.45), "method": runs(0.65, 0.5)}
    line = next(x for x in per_seed_table(results).splitlines() if x.startswith("| method"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[2] == "65.0 / 50.0 (seeds 0, 1)"
    assert cells[3] == "57.5"
    assert cells[4] == f"{0.45 / 0.6:.2f} / {0.1 / 0.5:.2f}"  # (m - dt) / (oracle - dt) per seed
    assert cells[5] == "+15.0 / +5.0"
