"""The console script on the shipped configs, shrunk to toy size."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reidlab.cli import main, repeated_key, run_cli

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


def test_quickstart_config_fits_and_evaluates(tmp_path, capsys):
    main(["fit", *tiny_args("quickstart.yaml", tmp_path)])
    summary = capsys.readouterr().out
    assert "reidlab fit: done" in summary and "val/mAP" in summary and " %" in summary
    assert "last.ckpt" in summary and "config.yaml" in summary and "figures" in summary
    figures = list(tmp_path.rglob("figures/val_ranked_list_epoch*.png"))
    assert figures, "the ranked-list figure is saved next to the CSV logs"
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "val/mAP" in metrics and "lr-Adam" in metrics  # the learning rate is logged
    run = tmp_path / "quickstart-baseline-mall-to-street"  # the logger's name
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [c.name for c in ckpts] == ["epoch=0-step=2.ckpt", "last.ckpt"]
    config = (run / "config.yaml").read_text()  # the full config, next to the checkpoints
    assert "RetrievalEvaluation" in config and "max_epochs: 1" in config
    main(["test", *tiny_args("quickstart.yaml", tmp_path), "--ckpt_path", str(ckpts[0])])
    capsys.readouterr()
    # another method's config with this Baseline checkpoint: refused, both classes named,
    # as one message and exit code 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "examples" / "configs" / "synthetic" / "arn.yaml"),
              "--ckpt_path", str(ckpts[0]), "--trainer.max_epochs", "1"])
    assert exit_info.value.code == 2
    assert re.search(r"checkpoint of reidlab\.modules\.Baseline.*ARN", capsys.readouterr().err)
    # test without a checkpoint scores random weights: refused unless asked
    with pytest.raises(SystemExit, match="without --ckpt_path"):
        main(["test", *tiny_args("quickstart.yaml", tmp_path)])
    # a file that is no checkpoint is named
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *tiny_args("quickstart.yaml", tmp_path), "--ckpt_path", str(garbage)])
    assert exit_info.value.code == 2
    assert "garbage.ckpt is not a readable Lightning checkpoint" in capsys.readouterr().err


def test_main_job_adapts_the_baseline_and_compares_the_two_runs(tmp_path, capsys):
    # scripts/quickstart.sh at toy size: direct transfer, SBase from its last.ckpt, compare
    from reidlab.compare import main as compare

    main(["fit", *tiny_args("quickstart.yaml", tmp_path)])
    baseline = tmp_path / "quickstart-baseline-mall-to-street"
    main(["fit", *tiny_args("quickstart_adapt.yaml", tmp_path), "--model.init_args.pretrained",
          str(baseline / "checkpoints" / "last.ckpt")])
    adapted = tmp_path / "quickstart-sbase-mall-to-street"
    assert "reidlab fit: done" in capsys.readouterr().out
    written = json.loads((adapted / "metrics.json").read_text())
    assert written["subcommand"] == "fit" and 0 <= written["val/mAP"] <= 1
    compare([str(baseline), str(adapted), "--names", "direct transfer", "SBase"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["direct", "transfer", "SBase"]
    row = next(line for line in table if line.startswith("val/mAP"))
    base_map = json.loads((baseline / "metrics.json").read_text())["val/mAP"]
    assert row.split() == ["val/mAP", f"{100 * base_map:.1f}", "%",
                           f"{100 * written['val/mAP']:.1f}", "%"]
    with pytest.raises(SystemExit, match="no metrics of a finished run"):
        compare([str(tmp_path / "nothing")])


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
    # a dataset error: one line naming the folder, exit code 2, no traceback
    missing = tmp_path / "no_such_market"
    proc = subprocess.run(
        [str(exe), "fit", "--config", str(ROOT / "examples" / "configs" / "quickstart.yaml"),
         "--model.init_args.weights", "null", "--data.init_args.source", "market1501",
         "--data.init_args.source_root", str(missing), "--trainer.logger", "false"],
        capture_output=True, text=True, env=dict(os.environ, REIDLAB_CACHE=str(tmp_path)),
        timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"reidlab: error: dataset root {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["--model.init_args.warmup_epoch", "2"],
     "reidlab.modules.Baseline has no argument 'warmup_epoch'; did you mean 'warmup_epochs'"),
    (["--data.init_args.num_idss", "3"], "CrossDomainDataModule has no argument 'num_idss'; "
                                         "did you mean 'num_ids'"),
    (["--trainer.callbacks+=RetrievalEvaluation", "--trainer.callbacks.metrik", "cosine"],
     "RetrievalEvaluation has no argument 'metrik'; did you mean 'metric'?\n"),
    (["--model.init_args.lr", "abc"], "reidlab.modules.Baseline: lr: Expected a <class 'float'>"),
    (["--data", "ReIDDataModule", "--data.init_args.source_kwargs", "{num_train_ids: 8}"],
     "reidlab.datamodules.ReIDDataModule has no argument 'source_kwargs'; did you mean "),
], ids=["model", "data", "callback", "value", "nested"])
def test_a_config_error_is_one_message_with_the_closest_names(args, expected, capsys):
    config = str(ROOT / "examples" / "configs" / "quickstart.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("reidlab: error: ")
    assert expected in err and "usage:" not in err and len(err.splitlines()) <= 3, err


def test_a_misspelt_config_file_key_gets_the_closest_option(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainr:\n  max_epochs: 2\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "examples" / "configs" / "quickstart.yaml"),
              "--config", str(typo)])
    assert "unknown option 'trainr.max_epochs'; did you mean 'trainer.max_epochs'" in (
        capsys.readouterr().err)


def test_a_key_written_twice_is_found_with_its_path_and_lines():
    text = ("trainer:\n  callbacks:\n    - class_path: A\n      init_args: {eps: 0.6, k1: 30}\n"
            "    - class_path: B\n      init_args:\n        eps: 0.5\n        eps: 0.6\n")
    assert repeated_key(text) == ("trainer.callbacks[1].init_args.eps", 7, 8)
    assert repeated_key(text.replace("        eps: 0.6\n", "")) is None
    assert repeated_key("a: {b: 1, b: 2}") == ("a.b", 1, 1)
    assert repeated_key("a: [unclosed") is None  # not YAML: the parser's own error


def test_a_config_file_with_a_key_twice_is_refused_naming_file_and_key(tmp_path, capsys):
    twice = tmp_path / "twice.yaml"
    twice.write_text("model:\n  init_args:\n    lr: 0.1\n    lr: 0.2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "examples" / "configs" / "quickstart.yaml"),
              "--config", str(twice)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"{twice}: 'model.init_args.lr' is written twice (lines 3 and 4)" in err, err


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


def test_run_cli_in_process_returns_the_trained_objects_and_writes_no_config(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(sys, "argv", ["notebook", "--caller-flag"])
    args = tiny_args("quickstart.yaml", tmp_path)
    cli = run_cli(args, run=False)  # parsed and built, not run
    assert cli.trainer.state.finished is False and cli.trainer.global_step == 0
    assert sys.argv == ["notebook"]  # DDP's launcher would re-run the caller's flags
    cli = run_cli(["fit", *args])
    assert cli.trainer.global_step == 2 and cli.trainer.state.finished
    assert "val/mAP" in cli.trainer.callback_metrics
    assert not list(tmp_path.rglob("config.yaml"))  # main() writes one next to the run
    main(["fit", *args])
    assert list(tmp_path.rglob("config.yaml"))


def test_predict_writes_features_of_query_gallery_and_of_a_plain_folder(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from reidlab.callbacks import FeatureWriter
    from reidlab.datamodules import ImageFolderDataModule
    from reidlab.modules import Baseline

    main(["fit", *tiny_args("quickstart.yaml", tmp_path)])
    ckpt = str(next(tmp_path.rglob("*.ckpt")))
    main(["predict", *tiny_args("quickstart.yaml", tmp_path), "--ckpt_path", ckpt])
    out = torch.load(tmp_path / "features.pt", weights_only=False)
    model = Baseline.load_from_checkpoint(ckpt, map_location="cpu")
    n = len(out["paths"])
    assert out["features"].shape == (n, model.feature_dim) and out["num_query"] < n
    assert out["pids"].shape == out["camids"].shape == (n,) and (out["pids"] >= 0).all()
    # the first row is the first query image: the same feature as extracting it by hand
    dm = ImageFolderDataModule(str(Path(out["paths"][0]).parent), height=64, width=32,
                               num_workers=0)
    first = dm.records.index(next(r for r in dm.records if r.path == out["paths"][0]))
    image = dm.predict_dataloader().dataset[first][0][None]
    torch.testing.assert_close(out["features"][0], model.extract_features(image)[0],
                               rtol=1e-4, atol=1e-5)
    # a plain folder of images without ids, to .npz
    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 64), (40 * i, 80, 120)).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image")
    import pytorch_lightning as pl
    writer = FeatureWriter(tmp_path / "photos.npz")
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[writer],
                         enable_progress_bar=False)
    trainer.predict(model, ImageFolderDataModule(str(tmp_path / "photos"), 64, 32,
                                                 num_workers=0))
    saved = np.load(tmp_path / "photos.npz")
    assert saved["features"].shape == (3, model.feature_dim)
    assert [Path(p).name for p in saved["paths"]] == ["p0.png", "p1.png", "p2.png"]
    assert (saved["pids"] == -1).all()
    with pytest.raises(ValueError, match="must end in"):
        FeatureWriter(tmp_path / "features.csv")
    # the same folder from the command line: the model keeps the checkpoint's classes
    main(["predict", "--model", "Baseline", "--data", "ImageFolderDataModule",
          "--data.root", str(tmp_path / "photos"), "--data.height", "64", "--data.width", "32",
          "--data.num_workers", "0", "--ckpt_path", ckpt, "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path / "out")])
    cli_out = torch.load(tmp_path / "out" / "features.pt", weights_only=False)
    np.testing.assert_allclose(cli_out["features"].numpy(), saved["features"], rtol=1e-4,
                               atol=1e-5)


def test_ckpt_path_last_resumes_the_run_and_its_wandb_run_or_refuses(tmp_path, monkeypatch):
    import torch
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    # the config's W&B logger (offline), in tmp_path
    args = [a.replace("CSVLogger", "WandbLogger") for a in tiny_args("quickstart.yaml", tmp_path)]
    with pytest.raises(SystemExit, match="no last.ckpt"):
        main(["fit", *args, "--ckpt_path", "last"])
    # limit_train_batches 1 is one batch (the parser's float 1.0 would be a full epoch)
    main(["fit", *args, "--trainer.limit_train_batches", "1"])
    folder = tmp_path / "quickstart-baseline-mall-to-street" / "checkpoints"
    first = torch.load(folder / "last.ckpt", weights_only=False)
    assert first["global_step"] == 1 and first["wandb_run_id"]
    wandb.finish()  # as the end of the process would: the next fit is a new W&B session
    main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    wandb.finish()
    last = torch.load(folder / "last.ckpt", weights_only=False)
    # the second fit continued the first: epoch 1 of 2 batches after epoch 0 of 1
    assert last["epoch"] == 1 and last["global_step"] == 3
    # ... and its W&B run (offline: a second folder of the same run id)
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.rsplit("-", 1)[1] for r in runs} == {first["wandb_run_id"]}
    assert last["wandb_run_id"] == first["wandb_run_id"]
