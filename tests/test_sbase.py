"""SBase and DCDFA: pretrained loading, pseudo-label hand-over, degenerate clusterings,
CLI fits and resume from a mid-run checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from reidlab.callbacks import MeanTeacher, PseudoLabeling
from reidlab.cli import main
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import DCDFA, Baseline, SBase
from tests.helpers import assert_same_state, assert_same_weights, synthetic_cli_args

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}
NET = {"backbone": "resnet18", "backbone_width": 0.25, "weights": None}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def tiny_dm(**kw) -> CrossDomainDataModule:
    args = dict(source_kwargs=TINY, target_kwargs=TINY, height=32, width=16, num_ids=2,
                num_instances=4, num_workers=0, flip_p=0.0, padding=0, erasing_p=0.0)
    return CrossDomainDataModule(**(args | kw))


def trainer(tmp_path: Path, callbacks=(), **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                use_distributed_sampler=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path), deterministic=True)
    return pl.Trainer(callbacks=list(callbacks), **(args | kw))


def baseline_checkpoint(tmp_path: Path) -> str:
    model = Baseline(num_classes=8, **NET)
    path = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def test_pretrained_baseline_weights_are_loaded_into_student_and_teacher(tmp_path):
    path = baseline_checkpoint(tmp_path)
    state = torch.load(path)["state_dict"]
    model = SBase(num_classes=8, pretrained=path, **NET)
    for name, value in model.student.backbone.state_dict().items():
        # domain-specific BN: the Baseline's running statistics start both domains
        assert_same_weights(value, state[f"backbone.{name}"])
        torch.testing.assert_close(model.teacher.backbone.state_dict()[name], value)
    torch.testing.assert_close(model.neck.classifier.weight, state["neck.classifier.weight"])
    assert not any(p.requires_grad for p in model.teacher.parameters())
    with pytest.raises(ValueError, match="do not fit"):
        SBase(num_classes=5, pretrained=path, **NET)
    with pytest.raises(OSError, match="missing.ckpt"):
        SBase(num_classes=8, pretrained=str(tmp_path / "missing.ckpt"), **NET)
    (tmp_path / "garbage.ckpt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(OSError, match="garbage.ckpt: UnpicklingError"):
        SBase(num_classes=8, pretrained=str(tmp_path / "garbage.ckpt"), **NET)
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no 'backbone"):
        SBase(num_classes=8, pretrained=str(tmp_path / "other.ckpt"), **NET)


def test_dcdfa_test_feature_is_the_teachers_pooled_feature():
    model = DCDFA(num_classes=8, **NET).eval()
    images = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        fmap, f = model.teacher(images)
        torch.testing.assert_close(model.extract_features(images), f)
        model.hparams.test_with_base = True
        torch.testing.assert_close(model.extract_features(images),
                                   model.teacher.attention(fmap) * f)
    assert model.hparams.reduction == 8 and model.hparams.num_classes == 8


def test_neck_batch_norm_by_hand_and_under_bf16_autocast():
    """DCDFA's BN of recomposed features: (x - mean_ref) / sqrt(var_ref + eps) * w + b with
    the reference batch's biased statistics, also for half-precision features under CPU
    autocast (the CPU batch_norm refuses bf16 input next to float32 statistics)."""
    model = DCDFA(num_classes=8, **NET)
    bn = model.neck.bn
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
    dim = bn.weight.shape[-1]
    feats, ref = torch.randn(5, dim, generator=gen), torch.randn(7, dim, generator=gen) * 2 + 1
    weight, bias = bn.weight.detach(), bn.bias.detach()
    if weight.dim() == 2:  # per-domain affine parameters
        weight, bias = weight[0], bias[0]

    def by_hand(x, r):
        x, r = x.double(), r.double()
        mean, var = r.mean(0), r.var(0, unbiased=False)
        return (x - mean) / torch.sqrt(var + bn.eps) * weight.double() + bias.double()

    got = model.neck_batch_norm(feats, 0, statistics_of=ref)
    torch.testing.assert_close(got.double(), by_hand(feats, ref), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model.neck_batch_norm(feats.bfloat16(), 0, statistics_of=ref.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), by_hand(feats.bfloat16(), ref.bfloat16()),
                               rtol=2e-2, atol=2e-2)


def test_fit_hands_pseudo_labels_to_datamodule_module_and_memory(tmp_path):
    dm = tiny_dm()
    model = SBase(num_classes=8, **NET)
    labeler = PseudoLabeling(eps=0.9, min_samples=2, k1=6, k2=2)
    fit = trainer(tmp_path, [labeler, MeanTeacher(alpha=0.9)])
    fit.fit(model, dm)
    labels = labeler.labels
    assert len(labeler.history) == 2  # fit start + after epoch 0 (not after the last)
    np.testing.assert_array_equal(dm.pseudo_labels, labels)
    np.testing.assert_array_equal(model.target_labels.numpy(), labels)
    assert int(model.num_target_clusters) == labels.max() + 1
    assert bool(model.memory.initialized)
    assert model.memory.target.shape == (len(dm.target_data.train), model.feature_dim)
    assert {"ari", "nmi", "pair_precision", "pair_recall"} <= set(labeler.history[-1])
    # the target classifier rows of the last clustering are the normalised centres
    k = int(model.num_target_clusters)
    assert torch.all(model.target_classifier[k:] == 0)


def test_all_outliers_skip_the_target_loss_with_a_warning(tmp_path):
    dm = tiny_dm()
    model = SBase(num_classes=8, memory_bank=False, mean_teacher=False, **NET)
    labeler = PseudoLabeling(eps=1e-6, min_samples=4, k1=6, k2=2)
    losses = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/target"]))

    with pytest.warns(UserWarning, match="every target sample is an outlier"):
        trainer(tmp_path, [labeler, Spy()], max_epochs=1).fit(model, dm)
    assert (labeler.labels == -1).all() and losses == [0.0, 0.0]


@pytest.mark.parametrize("config", ["sbase.yaml", "sbase_dcdfa.yaml"])
def test_cli_fit_two_epochs_from_a_baseline_checkpoint(config, tmp_path):
    main(["fit", *synthetic_cli_args("direct_transfer.yaml", tmp_path / "dt",
                            "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch",
                            "1")])
    ckpt = next((tmp_path / "dt").rglob("*.ckpt"))
    main(["fit", *synthetic_cli_args(config, tmp_path / "uda", "--model.init_args.pretrained",
                            str(ckpt))])
    metrics = next((tmp_path / "uda").rglob("metrics.csv")).read_text()
    assert "val/mAP" in metrics and "pseudo/num_clusters" in metrics
    assert "train/memory" in metrics
    if config == "sbase_dcdfa.yaml":
        assert "train/cid" in metrics and "train/domain" in metrics
    assert list((tmp_path / "uda").rglob("figures/pseudo_quality_epoch*.png"))
    # the trained checkpoint loads without the Baseline checkpoint it started from
    ckpt.unlink()
    trained = next((tmp_path / "uda").rglob("*.ckpt"))
    cls = DCDFA if config == "sbase_dcdfa.yaml" else SBase
    model = cls.load_from_checkpoint(trained, map_location="cpu")
    state = torch.load(trained, weights_only=False)["state_dict"]
    for name, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, state[f"teacher.{name}"])
    images = torch.randn(2, 3, 32, 16)
    assert model.extract_features(images).shape == (2, model.feature_dim)


def _run(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None, val: bool = False):
    pl.seed_everything(0)
    dm = tiny_dm()
    model = DCDFA(num_classes=8, domain_dropout=0.0, **NET)
    labeler = PseudoLabeling(eps=0.9, min_samples=2, k1=6, k2=2)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1,
                                         filename="{epoch}", save_on_train_epoch_end=not val)
    extra = dict(limit_val_batches=1, check_val_every_n_epoch=1) if val else {}
    fit = trainer(tmp_path, [labeler, MeanTeacher(alpha=0.9), saver], max_epochs=max_epochs,
                  enable_checkpointing=True, **extra)
    if val:
        from reidlab.callbacks import RetrievalEvaluation
        fit.callbacks.append(RetrievalEvaluation(num_figure_queries=0))
    fit.fit(model, dm, ckpt_path=ckpt_path)
    return model, dm, labeler


@pytest.mark.parametrize("val", [False, True], ids=["save-at-epoch-end", "save-after-val"])
def test_resume_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(tmp_path, val):
    full, full_dm, full_labeler = _run(tmp_path / "full", 3, val=val)
    ckpt = tmp_path / "full" / "ckpt" / "epoch=0.ckpt"
    assert ckpt.exists()
    resumed, resumed_dm, resumed_labeler = _run(tmp_path / "resumed", 3, str(ckpt), val=val)
    np.testing.assert_array_equal(full_labeler.labels, resumed_labeler.labels)
    np.testing.assert_array_equal(full_dm.pseudo_labels, resumed_dm.pseudo_labels)
    assert_same_state(resumed, full)


class _FirstStepAdamState(pl.Callback):
    """Adam's step count of the target classifier after the first step of a fit."""

    def __init__(self) -> None:
        self.steps = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.steps is None:
            state = trainer.optimizers[0].state.get(pl_module.target_classifier, {})
            self.steps = int(state["step"]) if "step" in state else 0


def test_resume_before_a_reclustering_gives_the_new_classifier_fresh_adam_moments(tmp_path):
    # the last epoch does not re-cluster: continuing a finished run with a larger
    # max_epochs re-clusters at fit start, before Lightning restores the optimizer
    dm = tiny_dm()
    model = SBase(num_classes=8, **NET)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer(tmp_path, [PseudoLabeling(eps=0.9, min_samples=2, k1=6, k2=2), saver],
            max_epochs=1, enable_checkpointing=True).fit(model, dm)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    old = torch.load(ckpt, weights_only=False)
    assert old["optimizer_states"][0]["state"], "the checkpoint holds Adam moments"
    labeler = PseudoLabeling(eps=0.9, min_samples=2, k1=6, k2=2)
    probe = _FirstStepAdamState()
    resumed = SBase(num_classes=8, **NET)
    fit = trainer(tmp_path, [labeler, probe], max_epochs=2)
    fit.fit(resumed, tiny_dm(), ckpt_path=ckpt)
    assert [h["epoch"] for h in labeler.history][-1] == 1.0  # re-clustered for epoch 1
    assert probe.steps == 1  # not the restored count + 1
    # the loss terms are on the progress bar
    assert {"train/source", "train/target", "train/memory"} <= set(fit.progress_bar_metrics)
