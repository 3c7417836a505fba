"""The console script on the shipped configs, shrunk to toy size."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reidlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = "{num_train_ids: 8, num_test_ids: 6, images_per_id: 6, height: 64, width: 32}"


def tiny_args(config: str, tmp_path: Path) -> list[str]:
    return [
        "--config", str(ROOT / "examples" / "configs" / config),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--data.init_args.source_kwargs", TINY, "--data.init_args.target_kwargs", TINY,
        "--data.init_args.height", "64", "--data.init_args.width", "32",
        "--data.init_args.num_workers", "0", "--data.init_args.num_ids", "4",
        "--data.init_args.num_instances", "2",
        "--model.init_args.weights", "null",  # the config's MobileNetV2, random init
    ]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def test_quickstart_config_fits_and_evaluates(tmp_path):
    main(["fit", *tiny_args("quickstart.yaml", tmp_path)])
    figures = list(tmp_path.rglob("figures/val_ranked_list_epoch*.png"))
    assert figures, "the ranked-list figure is saved next to the CSV logs"
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "val/mAP" in metrics
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1
    main(["test", *tiny_args("quickstart.yaml", tmp_path), "--ckpt_path", str(ckpts[0])])
    # another method's config with this Baseline checkpoint: refused, both classes named
    with pytest.raises(ValueError, match=r"checkpoint of reidlab\.modules\.Baseline.*ARN"):
        main(["fit", "--config", str(ROOT / "examples" / "configs" / "synthetic" / "arn.yaml"),
              "--ckpt_path", str(ckpts[0]), "--trainer.max_epochs", "1"])
    # test without a checkpoint scores random weights: refused unless asked
    with pytest.raises(SystemExit, match="without --ckpt_path"):
        main(["test", *tiny_args("quickstart.yaml", tmp_path)])
    # a file that is no checkpoint is named
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt is not a readable Lightning checkpoint"):
        main(["test", *tiny_args("quickstart.yaml", tmp_path), "--ckpt_path", str(garbage)])


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "reidlab"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([str(exe), "fit", "--help"], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)
    assert proc.returncode == 0 and "--config" in proc.stdout
    bad = subprocess.run([str(exe), "fit", "--config", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0


@pytest.mark.parametrize("config", sorted(p.relative_to(ROOT / "examples" / "configs").as_posix()
                                          for p in (ROOT / "examples" / "configs").rglob("*.yaml")))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "examples" / "configs" / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_smoke_modes_run_and_say_the_metric_is_partial(tmp_path):
    with pytest.warns(UserWarning, match="partial"):
        main(["fit", *tiny_args("quickstart.yaml", tmp_path), "--trainer.fast_dev_run", "true"])
    with pytest.warns(UserWarning, match="partial query"):
        main(["fit", *tiny_args("quickstart.yaml", tmp_path / "limit"),
              "--trainer.limit_val_batches", "2"])
