"""Ctrl-C and SIGTERM: a clean stop with a checkpoint, and a resume equal to never stopping."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from reidlab.callbacks import (
    InterruptCheckpoint,
    MeanTeacher,
    PseudoLabeling,
    TrainingInterrupted,
)
from reidlab.datamodules import PKBatchSampler
from reidlab.modules import DCDFA
from tests.helpers import ROOT, TINY, SendSignal, assert_same_state, run_script
from tests.test_sbase import NET, tiny_dm, trainer


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def test_a_resumed_sampler_skips_the_trained_batches_once():
    pids = np.repeat(np.arange(8), 4)
    sampler = PKBatchSampler(pids, num_ids=2, num_instances=2, num_batches=5, seed=3)
    sampler.set_epoch(4)
    epoch4 = list(sampler)
    sampler.set_epoch(0)
    sampler.resume(4, 2)
    assert list(sampler) == epoch4[2:]
    assert list(sampler) == epoch4  # the next pass is whole
    sampler.resume(4, 7)  # a shorter loader cycles: 7 batches done = 2 into its 2nd pass
    assert list(sampler) == epoch4[2:]


def _fit(tmp_path, signal=None, step=None, ckpt_path=None):
    pl.seed_everything(0)
    dm = tiny_dm()
    model = DCDFA(num_classes=8, domain_dropout=0.0, **NET)
    labeler = PseudoLabeling(eps=0.9, min_samples=2, k1=6, k2=2)
    callbacks = [labeler, MeanTeacher(alpha=0.9), InterruptCheckpoint(tmp_path / "ckpt")]
    if signal:
        callbacks.append(SendSignal(signal, step=step))
    fit = trainer(tmp_path, callbacks, max_epochs=3, limit_train_batches=3,
                  enable_checkpointing=True)
    code = None
    try:
        fit.fit(model, dm, ckpt_path=ckpt_path)
    except TrainingInterrupted as stop:
        code = stop.code
    return model, dm, labeler, code


def test_an_interrupted_fit_saves_and_resumes_as_if_never_stopped(tmp_path, signal="SIGINT"):
    # SIGTERM takes the same path (the DDP and CLI tests below send it)
    full, full_dm, full_labeler, code = _fit(tmp_path / "full")
    assert code is None
    # the signal comes during batch 2 of epoch 1 (after 4 steps); that batch finishes
    _, _, _, code = _fit(tmp_path / "cut", signal, step=4)
    assert code == 130
    ckpt = tmp_path / "cut" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == 5 and saved["epoch"] == 1
    resumed, resumed_dm, resumed_labeler, code = _fit(tmp_path / "resumed", ckpt_path=ckpt)
    assert code is None
    np.testing.assert_array_equal(full_labeler.labels, resumed_labeler.labels)
    np.testing.assert_array_equal(full_dm.pseudo_labels, resumed_dm.pseudo_labels)
    assert_same_state(resumed, full)


def test_a_sigterm_to_one_ddp_rank_stops_both_after_the_same_batch(tmp_path):
    # with Lightning's own SIGTERM handler this case aborts in gloo (a collective mismatch)
    out = tmp_path / "out.json"
    run_script("ddp_interrupt.py", str(out), "SIGTERM", "1", tmp_path=tmp_path)
    ranks = [json.loads((tmp_path / f"out.json.rank{r}").read_text()) for r in (0, 1)]
    assert ranks == [{"code": 143, "step": 2}] * 2


def test_the_cli_stops_cleanly_when_the_whole_process_group_gets_sigterm(tmp_path):
    # a scheduler signals every process, DataLoader workers included
    args = [
        sys.executable, "-m", "reidlab.cli", "fit",
        "--config", str(ROOT / "examples" / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
        "--trainer.check_val_every_n_epoch", "10", "--trainer.accelerator", "cpu",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=tests.helpers.SendSignal",
        "--trainer.callbacks.signal", "SIGTERM", "--trainer.callbacks.step", "5",
        "--trainer.callbacks.group", "true",
        "--data.init_args.source_kwargs", TINY, "--data.init_args.target_kwargs", TINY,
        "--data.init_args.height", "32", "--data.init_args.width", "16",
        "--data.init_args.num_workers", "2", "--data.init_args.num_ids", "4",
        "--data.init_args.num_instances", "2", "--model.init_args.weights", "null",
    ]
    env = dict(os.environ, REIDLAB_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          start_new_session=True)  # its own process group
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    ckpt = tmp_path / "quickstart-baseline-mall-to-street" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)  # inside epoch 1, after batch 2


def _fit_iics(tmp_path, step=None, ckpt_path=None):
    from reidlab.callbacks import IICSStages
    from reidlab.modules import IICS
    from tests import test_iics

    pl.seed_everything(0)
    model = IICS(**test_iics.NET, intra_epochs=2, inter_epochs=1, rounds=1, intra_clusters=4,
                 inter_clusters=8)
    stages = IICSStages(flip=True)
    callbacks = [stages, InterruptCheckpoint(tmp_path / "ckpt")]
    if step is not None:
        callbacks.append(SendSignal("SIGINT", step=step))
    fit = trainer(tmp_path, callbacks, max_epochs=3, enable_checkpointing=True)
    try:
        fit.fit(model, test_iics._dm(), ckpt_path=ckpt_path)
    except TrainingInterrupted:
        pass
    return model, stages


def test_iics_interrupted_inside_its_inter_stage_resumes_as_if_never_stopped(tmp_path):
    full, full_stages = _fit_iics(tmp_path / "full")
    _fit_iics(tmp_path / "cut", step=4)  # epoch 2 (the inter stage), after its batch 1
    ckpt = tmp_path / "cut" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (2, 5)
    resumed, resumed_stages = _fit_iics(tmp_path / "resumed", ckpt_path=ckpt)
    assert [h["epoch"] for h in resumed_stages.history] == [0, 2]  # none redone
    np.testing.assert_array_equal(full_stages.labels, resumed_stages.labels)
    assert_same_state(resumed, full)
