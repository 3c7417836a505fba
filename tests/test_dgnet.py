"""DG-Net and DG-Net++ modules: where each loss term's gradient goes, the test feature, the
re-ranked clustering distance, rounds, resume inside a round, bf16, DDP and the CLI."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from reidlab.callbacks import InterruptCheckpoint, PseudoLabeling, TrainingInterrupted
from reidlab.cli import main as cli_main
from reidlab.clustering import reranked_distance
from reidlab.datamodules import CrossDomainDataModule, ReIDDataModule
from reidlab.errors import InputFileError, InputValueError, MissingFileError
from reidlab.metrics import pairwise_distance, re_ranking
from reidlab.modules import Baseline, DGNet, DGNetPP
from tests.helpers import ROOT, SendSignal, assert_same_state, run_script

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}
NET = dict(backbone="resnet18", backbone_width=0.25, weights=None,
           structure_channels=(4, 8, 8, 8), code_channels=16, residual_blocks=2, mlp_hidden=16,
           decoder_channels=(8, 8), discriminator_scales=2, discriminator_width=8,
           discriminator_blocks=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def save_module(module: pl.LightningModule, path) -> str:
    """A checkpoint as Lightning writes it, without a fit."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return str(path)


@pytest.fixture
def teacher(tmp_path) -> str:
    pl.seed_everything(1)
    return save_module(Baseline(num_classes=8, backbone="resnet18", backbone_width=0.25,
                                weights=None), tmp_path / "teacher.ckpt")


def cross_dm(**kw) -> CrossDomainDataModule:
    args = dict(source="synthetic:mall", target="synthetic:street", source_kwargs=TINY,
                target_kwargs=TINY, height=64, width=32, batches="domain_pairs",
                pair_batch_size=4, num_workers=0, flip_p=0.0, padding=0, erasing_p=0.0)
    return CrossDomainDataModule(**(args | kw))


def tiny_trainer(tmp_path, callbacks=(), **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, use_distributed_sampler=False,
                num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                reload_dataloaders_every_n_epochs=1)
    return pl.Trainer(callbacks=list(callbacks), **(args | kw))


def clustering() -> PseudoLabeling:
    """DG-Net++'s re-ranked DBSCAN at the toy size (48 target images of 8 ids)."""
    return PseudoLabeling(distance="reranked", eps=0.45, min_samples=2, k1=5, k2=2)


def pair_batch(n=4, domains=(0, 0), seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2 * n, 3, 64, 32, generator=gen)
    positives = torch.randn(2 * n, 3, 64, 32, generator=gen)
    pids = torch.randint(0, 3, (2 * n,), generator=gen)
    dom = torch.tensor([domains[0]] * n + [domains[1]] * n)
    return images, positives, pids, dom


# -- the re-ranked clustering distance ------------------------------------------------------


def test_reranked_distance_equals_the_reference_re_ranking_on_its_pattern():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 8, generator=gen) * 2
    x = torch.nn.functional.normalize(centers.repeat(10, 1) + torch.randn(60, 8, generator=gen),
                                      dim=1)
    nq = 25
    d = pairwise_distance(x, x, metric="cosine").numpy()
    ref = re_ranking(d[:nq, nq:], d[:nq, :nq], d[nq:, nq:], k1=20, k2=6, lambda_value=0.3)
    ours = reranked_distance(x, k1=20, k2=6, lambda_value=0.3)
    block = ours[:nq, nq:].toarray()
    stored = np.zeros_like(block, dtype=bool)
    coo = ours[:nq, nq:].tocoo()
    stored[coo.row, coo.col] = True
    np.testing.assert_allclose(block[stored], ref[stored], atol=1e-5)
    assert stored.mean() > 0.3 and (ref[~stored] >= 0.7 - 1e-6).all()  # missing: >= 1 - lambda
    assert np.allclose(ours.diagonal(), 0)
    with pytest.raises(ValueError, match="eps < 1 - lambda"):
        PseudoLabeling(distance="reranked", eps=0.8, lambda_value=0.3)


# -- the step -------------------------------------------------------------------------------


def _grads(loss, groups):
    out = {}
    for name, params in groups.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out[name] = any(g is not None and g.abs().sum() > 0 for g in grads)
    return out


@pytest.mark.parametrize("method", ["dgnet", "dgnetpp"])
def test_each_loss_term_reaches_only_what_the_method_says(method, teacher):
    pl.seed_everything(0)
    if method == "dgnet":
        model = DGNet(num_classes=8, teacher=teacher, ramp_start=0, ramp_iterations=0, **NET)
        domains = (0, 0)
    else:
        model = DGNetPP(num_classes=8, teacher=teacher, max_clusters=5, **NET)
        model.round, model.num_clusters = 0, 3  # round 0: adversarial alignment
        domains = (0, 1)  # a source-target batch
    object.__setattr__(model, "teacher_model", model.load_teacher(teacher))
    groups = {"E_a": list(model.appearance_encoder.parameters()),
              "G": list(model.generators.parameters()),
              "D": list(model.discriminator.parameters())}
    if method == "dgnetpp":
        groups["D_domain"] = list(model.domain_discriminator.parameters())
    p = model.forward_pairs(*pair_batch(domains=domains))
    terms = model.generator_terms(p)
    image_terms = {"gan", "recon", "recon_positive", "structure", "appearance", "cycle",
                   "recon_id"}
    encoder_terms = {"id", "positive_id", "teacher"} | ({"domain"} if method == "dgnetpp"
                                                        else set())
    assert set(terms) == image_terms | encoder_terms
    for name, (weight, loss) in terms.items():
        reached = _grads(loss, groups)
        expected = {g: False for g in groups} | ({"G": True} if name in image_terms
                                                 else {"E_a": True})
        assert reached == expected, name
        assert weight > 0 and torch.isfinite(loss)
    d_loss = sum(model.discriminator_loss(p).values())
    assert _grads(d_loss, groups) == {g: g == "D" for g in groups}


def test_test_feature_is_the_weighted_cosine_of_flip_summed_heads():
    pl.seed_everything(0)
    model = DGNet(num_classes=8, w_teacher=0, **NET).eval()
    images = torch.randn(3, 3, 64, 32)
    feats = model.extract_features(images)
    with torch.no_grad():
        out, flipped = model.appearance_encoder(images), model.appearance_encoder(
            images.flip(-1))
    p = torch.nn.functional.normalize(out["primary"][0] + flipped["primary"][0], dim=1)
    f = torch.nn.functional.normalize(out["fine"][0] + flipped["fine"][0], dim=1)
    expected = (p @ p.T + 0.5 * f @ f.T) / 1.5
    torch.testing.assert_close(feats @ feats.T, expected, atol=1e-5, rtol=1e-5)


def test_dgnet_trains_on_pairs_and_refuses_a_missing_teacher(tmp_path, teacher):
    pl.seed_everything(0)
    model = DGNet(num_classes=8, teacher=teacher, ramp_start=1, ramp_iterations=2, **NET)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dm = ReIDDataModule(dataset="synthetic:mall", dataset_kwargs=TINY, height=64, width=32,
                        sampler="pairs", pair_batch_size=4, num_workers=0)
    tiny_trainer(tmp_path).fit(model, dm)
    assert int(model.iteration) == 4 and model.ramp() == 1.0
    for prefix in ("appearance_encoder.", "generators.0.", "discriminator."):
        assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items()
                   if k.startswith(prefix) and v.is_floating_point()), prefix
    assert not any(k.startswith("teacher") for k in model.state_dict())
    with pytest.raises(InputValueError, match="needs teacher"):
        tiny_trainer(tmp_path).fit(DGNet(num_classes=8, **NET), dm)
    with pytest.raises(MissingFileError, match="nope.ckpt does not exist"):
        model.load_teacher(str(tmp_path / "nope.ckpt"))
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(InputFileError, match="junk.ckpt as a reidlab Baseline"):
        model.load_teacher(str(tmp_path / "junk.ckpt"))
    with pytest.raises(InputValueError, match="classifies 8 identities, but the source has 5"):
        DGNet(num_classes=5, w_teacher=0, **NET).load_teacher(teacher)
    plain = ReIDDataModule(dataset="synthetic:mall", dataset_kwargs=TINY, height=64, width=32,
                           num_workers=0)
    with pytest.raises(InputValueError, match="needs image pairs"):
        tiny_trainer(tmp_path).fit(DGNet(num_classes=8, w_teacher=0, **NET), plain)
    with pytest.raises(InputValueError, match=r"\[1, 0, 0, 0\]"):
        tiny_trainer(tmp_path).fit(DGNet(num_classes=8, w_teacher=0, **NET), cross_dm())


# -- DG-Net++ rounds, resume, precision, DDP ----------------------------------------------


class RoundRecorder(pl.Callback):
    def __init__(self) -> None:
        self.rounds, self.weights, self.optimizer_states, self.labels = [], [], [], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.rounds.append(pl_module.round)
        self.weights.append(trainer.datamodule.type_weights)
        self.optimizer_states.append(sum(len(o.state) for o in trainer.optimizers))
        self.classifier = pl_module.appearance_encoder.primary.classifier[1].weight

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _, pids, _, _, domains, _ = batch["pairs"]
        self.labels.append((pl_module.joint_labels(pids, domains), domains))


def test_rounds_recreate_heads_and_optimizers_and_put_source_ids_first(tmp_path, teacher):
    pl.seed_everything(0)
    source = DGNet(num_classes=8, w_teacher=0, **NET)
    pretrained = save_module(source, tmp_path / "dgnet.ckpt")
    model = DGNetPP(num_classes=8, pretrained=pretrained, teacher=teacher, max_clusters=40,
                    round0_epochs=1, round_epochs=1, **NET)
    for key, value in source.state_dict().items():
        if key.startswith("generators.0."):
            other = key.replace("generators.0.", "generators.1.")
            assert torch.equal(model.state_dict()[key], value)
            assert torch.equal(model.state_dict()[other], value)
    recorder = RoundRecorder()
    classifier = model.appearance_encoder.primary.classifier[1].weight
    tiny_trainer(tmp_path, [clustering(), recorder], max_epochs=2).fit(model, cross_dm())
    assert recorder.rounds == [0, 1] and model.round == 1
    assert recorder.optimizer_states == [0, 0]  # re-created at each round start
    assert recorder.weights[0][0] > 0 and recorder.weights[1][0] == 0  # no source-source
    assert recorder.classifier is classifier and classifier.shape[0] == 8 + 40  # one shape
    assert 0 < model.num_clusters <= 40
    for labels, domains in recorder.labels:
        assert (labels[domains == 0] < 8).all() and (labels[domains == 1] >= 8).all()
        assert (labels < 8 + model.num_clusters).all()


def test_resume_inside_a_round_matches_the_uninterrupted_run(tmp_path, teacher):
    pl.seed_everything(0)
    pretrained = save_module(DGNet(num_classes=8, w_teacher=0, **NET), tmp_path / "dgnet.ckpt")

    def fit(path, signal_step=None, ckpt_path=None):
        pl.seed_everything(0)
        model = DGNetPP(num_classes=8, pretrained=pretrained, teacher=teacher, max_clusters=40,
                        round0_epochs=1, round_epochs=2, **NET)
        callbacks = [clustering(), InterruptCheckpoint(path / "ckpt")]
        if signal_step:
            callbacks.append(SendSignal("SIGINT", step=signal_step))
        trainer = tiny_trainer(path, callbacks, max_epochs=3, enable_checkpointing=True)
        try:
            trainer.fit(model, cross_dm(), ckpt_path=ckpt_path)
        except TrainingInterrupted:
            pass
        return model

    full = fit(tmp_path / "full")
    # round 0 then round 1 from epoch 1: cut after batch 1 of epoch 2, the round's second
    # epoch (optimizer steps: 4 per iteration in round 0, with the domain discriminator,
    # then 3; the signal is acted on after the batch it arrives at)
    fit(tmp_path / "cut", signal_step=2 * 4 + 2 * 3)
    ckpt = tmp_path / "cut" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["epoch"] == 2 and saved["dgnetpp"]["round"] == 1
    assert saved["state_dict"]["iteration"].item() == 5
    resumed = fit(tmp_path / "resumed", ckpt_path=ckpt)
    assert resumed.round == 1 and resumed.num_clusters == full.num_clusters
    assert_same_state(resumed, full)


def test_bf16_mixed_steps_are_finite(tmp_path, teacher, aten_cpu_kernels):
    pl.seed_everything(0)
    pretrained = save_module(DGNet(num_classes=8, w_teacher=0, **NET), tmp_path / "dgnet.ckpt")
    model = DGNetPP(num_classes=8, pretrained=pretrained, teacher=teacher, max_clusters=40,
                    round0_epochs=1, round_epochs=1, **NET)
    losses = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append({k: v.item() for k, v in trainer.callback_metrics.items()})

    tiny_trainer(tmp_path, [clustering(), Losses()], limit_train_batches=1,
                 precision="bf16-mixed").fit(model, cross_dm())
    assert {"train/d_gan", "train/d_r1", "train/teacher", "train/domain", "train/g_loss"
            } <= set(losses[0])
    assert all(math.isfinite(v) for step in losses for v in step.values()), losses


def test_two_process_ddp_keeps_identical_weights_on_both_ranks(tmp_path):
    run_script("ddp_dgnet.py", str(tmp_path / "out"), tmp_path=tmp_path)
    r0, r1 = (torch.load(tmp_path / f"out.rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["rounds"] == r1["rounds"] == [0, 1]
    assert r0["batches"] != r1["batches"]  # each rank trained on its own images
    for key in r0["params"]:
        torch.testing.assert_close(r0["params"][key], r1["params"][key], msg=key)
    assert any(not torch.equal(r0["initial"][k], v) for k, v in r0["params"].items()
               if k.startswith("generators.1."))


def test_cli_fits_dgnet_then_dgnetpp_and_writes_the_grids(tmp_path, teacher):
    tiny = str(TINY).replace("'", "")
    common = ["--trainer.accelerator", "cpu", "--trainer.limit_train_batches", "2",
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
              "--data.init_args.source_kwargs", tiny, "--data.init_args.target_kwargs", tiny,
              "--data.init_args.height", "64", "--data.init_args.width", "32",
              "--data.init_args.num_workers", "0", "--data.init_args.pair_batch_size", "4",
              "--model.init_args.backbone", "resnet18", "--model.init_args.backbone_width",
              "0.25", "--model.init_args.weights", "null", "--model.init_args.teacher", teacher,
              "--model.init_args.structure_channels", "[4, 8, 8, 8]",
              "--model.init_args.code_channels", "16", "--model.init_args.mlp_hidden", "16",
              "--model.init_args.decoder_channels", "[8, 8]",
              "--model.init_args.discriminator_width", "8"]
    configs = ROOT / "examples" / "configs" / "synthetic"
    first = tmp_path / "dgnet"
    code = cli_main(["fit", "--config", str(configs / "dgnet.yaml"), *common,
                     "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
                     "--trainer.default_root_dir", str(first)])
    assert code in (0, None)
    assert sorted(p.name for p in first.rglob("val_generations_epoch*.png")) == [
        "val_generations_epoch000.png"]
    ckpt = next(first.rglob("*.ckpt"))
    second = tmp_path / "dgnetpp"
    code = cli_main(["fit", "--config", str(configs / "dgnetpp.yaml"), *common,
                     "--model.init_args.pretrained", str(ckpt),
                     "--model.init_args.round0_epochs", "1", "--model.init_args.round_epochs",
                     "1", "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
                     "--trainer.default_root_dir", str(second),
                     "--trainer.callbacks+=reidlab.callbacks.PseudoLabeling",
                     "--trainer.callbacks.distance=reranked", "--trainer.callbacks.eps=0.45",
                     "--trainer.callbacks.min_samples=2", "--trainer.callbacks.k1=5",
                     "--trainer.callbacks.k2=2"])
    assert code in (0, None)
    names = sorted(p.name for p in second.rglob("*.png"))
    assert {"val_generations_epoch000.png", "val_generations_epoch001.png"} <= set(names)
    assert any(n.startswith("pseudo_quality") for n in names)
    last = torch.load(next(second.rglob("*.ckpt")), weights_only=False)
    assert last["dgnetpp"]["round"] == 1
