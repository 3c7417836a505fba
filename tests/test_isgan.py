"""IS-GAN: losses against hand computations, network shapes, the three stages, manual
optimization, resume inside stage 2, precision, DDP and the CLI."""

import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins import MixedPrecision
from torch.distributions import Normal, kl_divergence

from reidlab.callbacks import InterruptCheckpoint, TrainingInterrupted
from reidlab.cli import main as cli_main
from reidlab.datamodules import ReIDDataModule
from reidlab.errors import InputValueError
from reidlab.losses import (
    class_loss,
    domain_loss,
    kl_divergence_loss,
    part_classification_loss,
    part_shuffle,
    positive_indices,
    random_part_masks,
    shuffling_loss,
)
from reidlab.modules import ISGAN
from reidlab.nn import Discriminator, Generator, PartBranches, build_backbone, split_backbone
from reidlab.nn.isgan import discriminator_depth, generator_layout
from tests.helpers import ROOT, SendSignal, assert_same_state, run_script

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}
NET = dict(backbone="resnet18", backbone_width=0.25, weights=None, image_size=(64, 32),
           generator_width=0.125, discriminator_width=0.25, part_dim=16, code_dim=8,
           noise_dim=8)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def tiny_dm(**kw) -> ReIDDataModule:
    args = dict(dataset="synthetic:mall", dataset_kwargs=TINY, height=64, width=32, num_ids=2,
                num_instances=4, num_workers=0, flip_p=0.0, padding=0, erasing_p=0.0)
    return ReIDDataModule(**(args | kw))


def tiny_trainer(tmp_path, callbacks=(), **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", max_epochs=3, limit_train_batches=2, limit_val_batches=0,
                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, use_distributed_sampler=False,
                num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    return pl.Trainer(callbacks=list(callbacks), **(args | kw))


# -- losses -------------------------------------------------------------------------------


def test_part_classification_loss_is_the_mean_of_the_part_cross_entropies():
    logits = [torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]),
              torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 3.0]])]
    labels = torch.tensor([0, 2])

    def ce(row, y):
        return -row[y] + math.log(sum(math.exp(v) for v in row))

    expected = sum(ce(z[i].tolist(), int(labels[i])) for z in logits for i in range(2)) / 4
    assert part_classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_kl_loss_sums_over_batch_and_dims_and_averages_over_parts():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    per_element = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    expected = per_element.sum(dim=(0, 2)).mean()
    torch.testing.assert_close(kl_divergence_loss(mu, logvar), expected)
    assert kl_divergence_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)).item() == 0.0


def test_shuffling_loss_sums_mean_l1_over_generations():
    target = torch.tensor([[0.0, 1.0], [0.5, -0.5]])
    a, b = torch.tensor([[1.0, 1.0], [0.5, 0.5]]), torch.zeros(2, 2)
    # a: |0-1| + 0 + 0 + |-0.5-0.5| = 2 -> mean 0.5;  b: 0 + 1 + 0.5 + 0.5 = 2 -> mean 0.5
    assert shuffling_loss(target, [a, b]).item() == pytest.approx(1.0)
    assert shuffling_loss(target, [target]).item() == 0.0


def test_domain_loss_is_bce_on_logits_and_noisy_labels_stay_in_their_ranges():
    logits = torch.tensor([[[[2.0, -1.0]]]])
    sig = torch.sigmoid(logits)
    torch.testing.assert_close(domain_loss(logits, real=True), -sig.log().mean())
    torch.testing.assert_close(domain_loss(logits, real=False), -(1 - sig).log().mean())
    # with confident logits the loss reads the targets: ~ (1 - t) * 20 for real, t * 20 fake
    torch.manual_seed(0)
    big = torch.full((1, 1, 50, 50), 20.0)
    real = domain_loss(big, real=True, noisy_labels=True).item()
    fake = domain_loss(-big, real=False, noisy_labels=True).item()
    assert 0.15 * 20 * 0.9 < real < 0.15 * 20 * 1.1  # mean of 1 - U(0.7, 1) is 0.15
    assert 0.15 * 20 * 0.9 < fake < 0.15 * 20 * 1.1  # mean of U(0, 0.3) is 0.15
    assert domain_loss(big, real=True).item() < 1e-6


def test_class_loss_sums_the_groups_cross_entropies():
    labels = torch.tensor([1, 0])
    groups = [torch.tensor([[0.0, 3.0], [1.0, -1.0]]), torch.tensor([[2.0, 2.0], [0.0, 0.0]])]
    expected = F.cross_entropy(groups[0], labels) + math.log(2)
    torch.testing.assert_close(class_loss(groups, labels), expected)


def test_positives_share_the_label_and_are_other_samples():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    for seed in range(5):
        pos = positive_indices(labels, torch.Generator().manual_seed(seed))
        assert (labels[pos] == labels).all()
        assert (pos[:5] != torch.arange(5)).all() and pos[5] == 5  # the lone sample: itself


def test_part_shuffle_swaps_a_nonempty_proper_subset_of_the_local_parts():
    eligible = [False, False, True, True, False, True, True, True]  # MGN (1, 2, 3) order
    masks = random_part_masks(2000, eligible, torch.Generator().manual_seed(0))
    local = masks[:, torch.tensor(eligible)]
    assert not masks[:, ~torch.tensor(eligible)].any()  # global features never swapped
    assert (local.sum(1) >= 1).all() and (local.sum(1) <= 4).all()  # not none, not all 5
    codes = {tuple(m.tolist()) for m in local}
    assert len(codes) == 2**5 - 2  # every non-empty proper subset occurs
    anchor, positive = torch.randn(2000, 8, 3), torch.randn(2000, 8, 3)
    shuffled = part_shuffle(anchor, positive, masks)
    swapped = (shuffled == positive).all(2)
    kept = (shuffled == anchor).all(2)
    assert torch.equal(swapped, masks) and torch.equal(kept, ~masks)
    assert (swapped.any(1) & kept.any(1)).all()  # a no-op (or a full swap) would fail
    with pytest.raises(ValueError, match="at least 2"):
        random_part_masks(3, [True, False, False])


# -- networks -----------------------------------------------------------------------------


@pytest.mark.parametrize("size, layout, d_map", [((384, 128), (6, 6, 2), (12, 4)),
                                                 ((96, 48), (4, 6, 3), (6, 3))])
def test_generator_and_discriminator_shapes_follow_the_input_size(size, layout, d_map):
    height, width = size
    assert generator_layout(height, width) == layout
    g = Generator(32, 16, num_classes=5, height=height, width=width, noise_dim=8,
                  width_factor=0.0625)
    images = g(torch.randn(2, 32), torch.randn(2, 16), torch.tensor([0, 4]))
    assert images.shape == (2, 3, height, width) and images.abs().max() <= 1
    d = Discriminator(num_classes=5, height=height, width=width, width_factor=0.25)
    assert d.blocks(images).shape[-2:] == d_map
    assert len(d.blocks) // 3 + 1 == discriminator_depth(height, width)
    domain, classes = d(images)
    assert domain.shape == (2, 1, d_map[0] - 2, d_map[1] - 2)  # two k4 s1 p1 convs: -1 each
    assert classes.shape == (2, 5)


def test_part_branches_give_mgn_features_and_strides():
    net = build_backbone("resnet18", None, last_stride=2, width=0.25)
    trunk, tail = split_backbone(net)
    branches = PartBranches(tail, (1, 2, 3))
    x = trunk(torch.randn(2, 3, 64, 32))
    out = branches(x)
    assert out.shape == (2, 8, tail[-1][-1].conv2.out_channels)
    assert branches.is_local == [False, False, True, True, False, True, True, True]
    maps = [b(x).shape[-2:] for b in branches.branches]
    assert maps[0] == (2, 1) and maps[1] == maps[2] == (4, 2)  # part-1 stride 2, others 1
    # the stripes are max-pools of the branch map's rows
    fmap = branches.branches[2](x)
    torch.testing.assert_close(out[:, 5], fmap[:, :, :2].amax(dim=(2, 3)))
    with pytest.raises(ValueError, match="last_stride=2"):
        split_backbone(build_backbone("resnet18", None, last_stride=1, width=0.25))


def test_test_feature_is_the_normalised_sum_with_the_flip():
    model = ISGAN(num_classes=8, **NET).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        ref = model.identity_features(x)["feature"] + model.identity_features(x.flip(-1))[
            "feature"]
    feats = model.extract_features(x)
    assert feats.shape == (3, 8 * 16)
    torch.testing.assert_close(feats, F.normalize(ref, dim=1))


# -- stages and optimization ----------------------------------------------------------------


class Snapshots(pl.Callback):
    """The state dict at the start of training and at the end of every epoch."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def _keep(self, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._keep(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._keep(pl_module)


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)
               and before[k].dtype.is_floating_point)


def test_stage_two_freezes_trunk_and_er_and_stage_three_trains_everything(tmp_path):
    pl.seed_everything(0)
    model = ISGAN(num_classes=8, stage_epochs=(1, 1, 1), **NET)
    snaps = Snapshots()
    tiny_trainer(tmp_path, [snaps]).fit(model, tiny_dm())
    start, first, second, third = snaps.states
    for prefix in ("trunk.", "identity_encoder."):  # weights and BN buffers identical
        assert _changed(start, first, prefix)
        assert all(torch.equal(first[k], second[k]) for k in first if k.startswith(prefix))
        assert _changed(second, third, prefix)
    for prefix in ("unrelated_encoder.", "generator.", "discriminator."):
        assert not _changed(start, first, prefix)  # stage 1 trains E_R alone
        assert _changed(first, second, prefix) and _changed(second, third, prefix)
    assert int(model.iteration) == 6  # Lightning's global_step counts 2 per step from stage 2
    assert model.trainer.global_step == 2 + 4 + 4
    lrs = [g["lr"] for opt in model.trainer.optimizers for g in opt.param_groups]
    assert lrs == [2e-5, 2e-5]


def test_the_d_step_and_the_g_step_reach_only_their_own_parameters(tmp_path, monkeypatch):
    pl.seed_everything(0)
    model = ISGAN(num_classes=8, stage_epochs=(1, 0, 1), **NET)
    names = {p: n.split(".")[0] for n, p in model.named_parameters()}
    record = []
    original = ISGAN.manual_backward

    def recording_backward(self, loss, *args, **kwargs):
        for p in self.parameters():
            p.grad = None
        original(self, loss, *args, **kwargs)
        record.append({names[p] for p in self.parameters() if p.grad is not None})

    monkeypatch.setattr(ISGAN, "manual_backward", recording_backward)
    tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=1).fit(model, tiny_dm())
    stage1, d_step, g_step = record
    assert stage1 == {"trunk", "identity_encoder"}
    assert d_step == {"discriminator"}
    assert g_step == {"trunk", "identity_encoder", "unrelated_encoder", "generator"}


def test_resume_inside_stage_two_matches_the_uninterrupted_run(tmp_path):
    def fit(path, signal_step=None, ckpt_path=None):
        pl.seed_everything(0)
        model = ISGAN(num_classes=8, stage_epochs=(1, 2, 0), **NET)
        callbacks = [InterruptCheckpoint(path / "ckpt")]
        if signal_step:
            callbacks.append(SendSignal("SIGINT", step=signal_step))
        trainer = tiny_trainer(path, callbacks, limit_train_batches=3, enable_checkpointing=True)
        try:
            trainer.fit(model, tiny_dm(flip_p=0.0), ckpt_path=ckpt_path)
        except TrainingInterrupted:
            pass
        return model

    full = fit(tmp_path / "full")
    fit(tmp_path / "cut", signal_step=3 + 2 * 4)  # epoch 2 (stage 2), during its batch 2
    ckpt = tmp_path / "cut" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["epoch"] == saved["isgan"]["epoch"] == 2 and saved["isgan"]["stage"] == 2
    assert saved["state_dict"]["iteration"].item() == 3 + 3 + 2
    resumed = fit(tmp_path / "resumed", ckpt_path=ckpt)
    assert resumed.stage == 2
    assert_same_state(resumed, full)
    # a checkpoint is refused by a schedule that puts its epoch in another stage
    other = ISGAN(num_classes=8, stage_epochs=(3, 0, 0), **NET)
    with pytest.raises(InputValueError, match="saved in stage 2"):
        other.on_load_checkpoint(saved)


def test_stages_two_and_three_start_from_a_stage_one_checkpoint(tmp_path):
    pl.seed_everything(0)
    stage1 = ISGAN(num_classes=8, stage_epochs=(1, 0, 0), lambda_d=0, lambda_c=0, **NET)
    fit = tiny_trainer(tmp_path / "one", max_epochs=1, limit_train_batches=1)
    fit.fit(stage1, tiny_dm())
    fit.save_checkpoint(tmp_path / "stage1.ckpt")
    model = ISGAN(num_classes=8, pretrained=str(tmp_path / "stage1.ckpt"),
                  stage_epochs=(0, 1, 0), **NET)
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in stage1.state_dict().items():
        if key.startswith(("trunk.", "identity_encoder.")):
            assert torch.equal(loaded[key], value), key
    assert model.stage == 2 and model.discriminator is not None
    fit = tiny_trainer(tmp_path / "two", max_epochs=1, limit_train_batches=1)
    fit.fit(model, tiny_dm())
    assert not _changed(loaded, model.state_dict(), "identity_encoder.")
    assert _changed(loaded, model.state_dict(), "generator.")
    # its checkpoint loads without the stage-1 file (pretrained is cleared in it)
    fit.save_checkpoint(tmp_path / "stage2.ckpt")
    assert_same_state(ISGAN.load_from_checkpoint(tmp_path / "stage2.ckpt"), model)
    with pytest.raises(InputValueError, match="skips stage 1"):
        tiny_trainer(tmp_path / "none").fit(ISGAN(num_classes=8, stage_epochs=(0, 1, 0), **NET),
                                            tiny_dm())
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}}, tmp_path / "baseline.ckpt")
    with pytest.raises(InputValueError, match="no 'identity_encoder"):
        ISGAN(num_classes=8, pretrained=str(tmp_path / "baseline.ckpt"), **NET)


def test_bf16_mixed_steps_are_finite_and_16_mixed_is_refused(tmp_path, aten_cpu_kernels):
    pl.seed_everything(0)
    model = ISGAN(num_classes=8, stage_epochs=(1, 0, 1), **NET)
    losses = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append({k: v.item() for k, v in trainer.callback_metrics.items()})

    tiny_trainer(tmp_path, [Losses()], max_epochs=2, limit_train_batches=1,
                 precision="bf16-mixed").fit(model, tiny_dm())
    last = losses[-1]
    assert {"train/d_loss", "train/g_loss", "train/identity"} <= set(last)
    assert all(math.isfinite(v) for v in last.values()), last
    # fp16 with a loss scaler (what 16-mixed is on a GPU; on CPU Lightning turns the
    # string into bf16-mixed, hence the explicit plugin)
    fp16 = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(InputValueError, match="16-mixed"):
        tiny_trainer(tmp_path, plugins=[fp16]).fit(ISGAN(num_classes=8, **NET), tiny_dm())


def test_two_process_ddp_keeps_identical_weights_on_both_ranks(tmp_path):
    run_script("ddp_isgan.py", str(tmp_path / "out"), tmp_path=tmp_path)
    r0, r1 = (torch.load(tmp_path / f"out.rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["stages"] == r1["stages"] == [1, 2, 3]
    assert r0["batches"] != r1["batches"]  # each rank trained on its own images
    assert r0["params"].keys() == r1["params"].keys()
    for key in r0["params"]:
        torch.testing.assert_close(r0["params"][key], r1["params"][key], msg=key)
    start = r0["initial"]
    for prefix in ("trunk.", "unrelated_encoder.", "generator.", "discriminator."):
        assert any(not torch.equal(start[k], v) for k, v in r0["params"].items()
                   if k.startswith(prefix)), prefix


# -- CLI ----------------------------------------------------------------------------------


def test_cli_fit_runs_the_three_stages_and_writes_the_generation_grid(tmp_path):
    tiny = json.dumps(TINY)
    code = cli_main([
        "fit", "--config", str(ROOT / "examples" / "configs" / "synthetic" / "isgan.yaml"),
        "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--data.init_args.dataset_kwargs", tiny, "--data.init_args.height", "64",
        "--data.init_args.width", "32", "--data.init_args.num_workers", "0",
        "--data.init_args.num_ids", "2", "--model.init_args.image_size", "[64, 32]",
        "--model.init_args.backbone", "resnet18", "--model.init_args.backbone_width", "0.25",
        "--model.init_args.weights", "null", "--model.init_args.generator_width", "0.125",
        "--model.init_args.stage_epochs", "[1, 1, 1]"])
    assert code in (0, None)
    grids = sorted(tmp_path.rglob("val_generations_epoch*.png"))
    assert [g.name for g in grids] == [f"val_generations_epoch00{e}.png" for e in range(3)]
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text().splitlines()
    header = metrics[0].split(",")
    stage_col = header.index("train/stage")
    assert [float(r.split(",")[stage_col]) for r in metrics[1:]
            if r.split(",")[stage_col]] == [1.0, 2.0, 3.0]
    assert {"train/d_loss", "train/g_loss", "train/shuffle", "train/part_shuffle"} <= set(header)
