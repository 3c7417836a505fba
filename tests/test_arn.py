"""ARN: losses against hand computations, shapes of both encoder forms, gradient routing,
learning-rate groups and E_I freezing, pretrained loading, CLI fits and checkpoints."""

import copy
import math

import pytest
import pytorch_lightning as pl
import torch

from reidlab.cli import main
from reidlab.datamodules import CrossDomainDataModule
from reidlab.losses import contrastive_loss, difference_loss, reconstruction_loss
from reidlab.modules import ARN, METHODS, Baseline
from reidlab.nn import DomainBatchNorm, bn_domain
from tests.helpers import assert_same_weights, synthetic_cli_args

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}
NET = {"backbone": "resnet18", "backbone_width": 0.25, "weights": None, "last_stride": 1,
       "decoder_grid": (4, 2)}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def images(n: int, height: int = 32, width: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(n))


# -- losses ----------------------------------------------------------------------------------
def test_difference_loss_matches_hand_computation():
    h_c = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 4.0], [1.0, 1.0, 1.0]])
    h_p = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -2.0], [1.0, 3.0]])

    def by_hand(a, b, normalize):
        if normalize:
            a = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in a]
            b = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in b]
        total = 0.0
        for k in range(len(a[0])):  # entry (k, l) of H_c^T H_p
            for m in range(len(b[0])):
                total += sum(a[i][k] * b[i][m] for i in range(len(a))) ** 2
        return total / (len(a[0]) * len(b[0]))

    for normalize in (True, False):
        expected = by_hand(h_c.tolist(), h_p.tolist(), normalize)
        assert difference_loss(h_c, h_p, normalize=normalize).item() == pytest.approx(expected)
    # shared and private varying along orthogonal sample directions: H_c^T H_p = 0
    u, v = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, -1.0, 0.0, 0.0])
    h_c = u[:, None] * torch.tensor([[1.0, 2.0]])
    h_p = v[:, None] * torch.tensor([[3.0, -1.0, 2.0]])
    assert difference_loss(h_c, h_p, normalize=False).item() == 0.0
    with pytest.raises(ValueError, match="matrices"):
        difference_loss(h_c, h_p[:3])


def test_contrastive_loss_matches_hand_computation():
    feats = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 2.0, 0.0],
                          [1.0, 1.0, 1.0], [0.0, 0.0, -3.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])

    def by_hand(margin):
        unit = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in feats.tolist()]
        terms = []
        for i in range(5):
            for j in range(i + 1, 5):
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(unit[i], unit[j], strict=True)))
                terms.append(d * d if labels[i] == labels[j] else max(0.0, margin - d) ** 2)
        return sum(terms), sum(terms) / len(terms)

    for margin in (1.0, 1.5):
        total, mean = by_hand(margin)
        assert contrastive_loss(feats, labels, margin).item() == pytest.approx(total, rel=1e-5)
        assert contrastive_loss(feats, labels, margin, "mean").item() == pytest.approx(mean,
                                                                                      rel=1e-5)
    # coincident features of different identities: finite gradient
    x = torch.ones(2, 4, requires_grad=True)
    loss = contrastive_loss(x, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(1.0, abs=1e-5) and torch.isfinite(x.grad).all()
    assert contrastive_loss(torch.ones(1, 4), torch.tensor([0]), reduction="mean").item() == 0.0


def test_reconstruction_loss_is_the_per_element_squared_error():
    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    x_hat = x + torch.tensor([1.0, -2.0]).reshape(2, 1, 1, 1)
    # sample 0: 12 elements off by 1, sample 1: 12 off by 2 -> (12 * 1 + 12 * 4) / 24
    assert reconstruction_loss(x_hat, x).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(x_hat[:, :2], x)


# -- network -----------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["fcn", "layer4"])
@pytest.mark.parametrize("size", [(32, 16), (48, 24)])
def test_reconstruction_shapes_for_both_encoder_forms(encoder, size):
    model = ARN(num_classes=8, encoder=encoder, **NET)
    layer4 = 128  # 512 channels x width 0.25
    x_channels = layer4 if encoder == "fcn" else layer4 // 2
    out = model.forward_pair(images(4, *size), images(3, *size))
    assert out["x"].shape[:2] == (7, x_channels)
    assert out["x_hat"].shape == out["x"].shape
    assert out["shared"].shape == out["private"].shape == (7, layer4)
    assert model.feature_dim == layer4
    feats = model.extract_features(images(2, *size))
    assert feats.shape == (2, layer4) and model.training
    with bn_domain(model, 1):  # test features: the target's BN statistics
        reference = model.eval().shared(model.backbone(images(2, *size)))
    torch.testing.assert_close(feats, reference)
    no_private = ARN(num_classes=8, encoder=encoder, private_encoders=False, **NET)
    out = no_private.forward_pair(images(4, *size), images(3, *size))
    assert out["x_hat"].shape == out["x"].shape and "private" not in out


def test_private_encoders_receive_no_gradient_from_the_classification_loss():
    model = ARN(num_classes=8, **NET)
    out = model.forward_pair(images(8), images(8))
    losses = model.losses(out, torch.arange(4).repeat_interleave(2))
    losses["class"].backward(retain_graph=True)
    private = [*model.private_source.parameters(), *model.private_target.parameters()]
    assert all(p.grad is None for p in private)
    assert all(p.grad is None for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.zero_grad()
    (losses["reconstruction"] + losses["difference"]).backward()
    assert all(p.grad is not None for p in private)


@pytest.mark.parametrize("private,source", [(True, True), (False, True), (True, False),
                                            (False, False)])
def test_every_trainable_parameter_is_used_in_every_ablation(private, source):
    """DDP needs a gradient for every trainable parameter at every step."""
    model = ARN(num_classes=8, private_encoders=private, source_losses=source, **NET)
    out = model.forward_pair(images(8), images(8))
    losses = model.losses(out, torch.arange(4).repeat_interleave(2))
    assert set(losses) == ({"reconstruction"} | ({"difference"} if private else set())
                           | ({"class", "contrastive"} if source else set()))
    model.total_loss(losses).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert (model.private_source is not None) == private
    assert (model.classifier is not None) == source
    # without source losses E_I keeps its initial weights: frozen, not in the optimizer
    assert all(p.requires_grad == source for p in model.backbone.parameters())
    groups = model.configure_optimizers()["optimizer"].param_groups
    names = [g["name"] for g in groups]
    assert names == ["backbone"] * source + ["encoders_decoder"] + ["classifier"] * source
    optimized = sum(len(g["params"]) for g in groups)
    assert optimized == sum(p.requires_grad for p in model.parameters())


def test_total_loss_weights_follow_eq_5():
    model = ARN(num_classes=8, **NET)
    losses = {k: torch.tensor(v) for k, v in
              {"class": 1.0, "contrastive": 2.0, "reconstruction": 3.0, "difference": 4.0}.items()}
    assert model.total_loss(losses).item() == pytest.approx(1.0 + 0.01 * 2 + 2.0 * 3 + 1500 * 4)


def test_learning_rate_groups_and_backbone_freezing_schedule():
    model = ARN(num_classes=8, backbone_epochs=2, milestones=[3], **NET)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 5e-4
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()  # no gradients: a no-op, in the order the scheduler expects
        scheduler.step()
    expected = [[1e-7, 1e-3, 2e-3], [1e-7, 1e-3, 2e-3], [0.0, 1e-3, 2e-3], [0.0, 1e-4, 2e-4]]
    for got, want in zip(lrs, expected, strict=True):
        assert got == pytest.approx(want)
    assert [model.backbone_tuned(e) for e in range(3)] == [True, True, False]
    assert ARN(num_classes=8, backbone_epochs=None, **NET).backbone_tuned(100)


def test_pretrained_baseline_initialises_e_i_and_the_layer4_copies(tmp_path):
    baseline = Baseline(num_classes=8, **{k: v for k, v in NET.items() if k != "decoder_grid"})
    path = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": baseline.state_dict()}, path)
    model = ARN(num_classes=8, pretrained=str(path), encoder="layer4", **NET)
    for name, value in model.backbone.state_dict().items():
        assert_same_weights(value, baseline.backbone.state_dict()[name])
    assert not any(k.startswith("layer4.") for k in model.backbone.state_dict())
    copies = [model.shared.stage, model.private_source.stage, model.private_target.stage]
    for stage in copies:
        for name, value in stage.state_dict().items():
            assert_same_weights(value, baseline.backbone.layer4.state_dict()[name])
    assert len({stage.state_dict()["0.conv1.weight"].data_ptr() for stage in copies}) == 3
    with pytest.raises(ValueError, match="do not fit"):
        ARN(num_classes=8, pretrained=str(path), **(NET | {"backbone_width": 0.5}))
    with pytest.raises(OSError, match="missing.ckpt"):
        ARN(num_classes=8, pretrained=str(tmp_path / "missing.ckpt"), **NET)
    with pytest.raises(ValueError, match="encoder"):
        ARN(num_classes=8, encoder="mlp", **NET)
    assert METHODS["arn"] is ARN


def test_backbone_is_tuned_in_the_first_epochs_only(tmp_path):
    pl.seed_everything(0)
    dm = CrossDomainDataModule(source_kwargs=TINY, target_kwargs=TINY, height=32, width=16,
                               num_ids=2, num_instances=4, target_sampler="random",
                               num_workers=0)
    model = ARN(num_classes=8, backbone_epochs=1, backbone_lr=0.1, **NET)
    snapshots = [[p.detach().clone() for p in model.backbone.parameters()]]

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append([p.detach().clone() for p in pl_module.backbone.parameters()])

    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2,
                         limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path), callbacks=[Snapshot()])
    trainer.fit(model, dm)

    def changed(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert changed(snapshots[0], snapshots[1])      # epoch 0: E_I tuned
    assert not changed(snapshots[1], snapshots[2])  # epoch 1: frozen


# -- CLI and checkpoints ---------------------------------------------------------------------
def test_cli_fit_two_epochs_from_a_baseline_checkpoint_and_checkpoint_round_trip(tmp_path):
    main(["fit", *synthetic_cli_args("direct_transfer.yaml", tmp_path / "dt",
                            "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch",
                            "1")])
    baseline = next((tmp_path / "dt").rglob("*.ckpt"))
    main(["fit", *synthetic_cli_args("arn.yaml", tmp_path / "arn", "--model.init_args.pretrained",
                            str(baseline))])
    metrics = next((tmp_path / "arn").rglob("metrics.csv")).read_text()
    for key in ("val/mAP", "train/class", "train/contrastive", "train/reconstruction",
                "train/difference", "train/loss"):
        assert key in metrics
    ckpt = next((tmp_path / "arn").rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1 and state["hyper_parameters"]["encoder"] == "layer4"
    model = ARN.load_from_checkpoint(ckpt, pretrained=None)
    again = ARN.load_from_checkpoint(ckpt)
    batch = images(5)
    feats = model.extract_features(batch)
    torch.testing.assert_close(again.extract_features(batch), feats, rtol=0, atol=0)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state["state_dict"][name], rtol=0, atol=0)


@pytest.mark.parametrize("config", ["arn_no_private.yaml", "arn_no_source.yaml",
                                    "arn_rec_only.yaml"])
def test_cli_fit_of_the_ablation_configs(config, tmp_path):
    main(["fit", *synthetic_cli_args(config, tmp_path, "--trainer.max_epochs", "1",
                            "--trainer.limit_train_batches", "1",
                            "--trainer.check_val_every_n_epoch", "1")])
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "val/mAP" in metrics and "train/reconstruction" in metrics
    assert ("train/difference" in metrics) == (config == "arn_no_source.yaml")
    assert ("train/class" in metrics) == (config == "arn_no_private.yaml")


def test_domain_bn_trains_each_domain_as_its_own_batch_and_shared_bn_concatenates():
    torch.manual_seed(0)
    dsbn = ARN(num_classes=8, **NET)
    torch.manual_seed(0)
    shared = ARN(num_classes=8, domain_bn=False, **NET)
    assert not any(isinstance(m, DomainBatchNorm) for m in shared.modules())
    src, tgt = images(4, 32, 16), images(3, 32, 16) + 1.0
    refs = [copy.deepcopy(shared) for _ in range(3)]
    out = dsbn.forward_pair(src, tgt)
    # reference per domain: the shared-BN model's encoders on that domain's batch alone
    ref_s = refs[0].encode_decode(refs[0].feature_maps(src), len(src))
    ref_t = refs[1].encode_decode(refs[1].feature_maps(tgt), 0)
    for key in ("x", "shared", "private", "x_hat"):
        torch.testing.assert_close(out[key], torch.cat([ref_s[key], ref_t[key]]), msg=key)
    first = next(m for m in dsbn.modules() if isinstance(m, DomainBatchNorm))
    plain = [next(m for m in r.modules() if isinstance(m, torch.nn.BatchNorm2d)) for r in refs]
    torch.testing.assert_close(first.running_mean[0], plain[0].running_mean)
    torch.testing.assert_close(first.running_mean[1], plain[1].running_mean)
    # shared BN: one batch of both domains (the old behaviour)
    shared.forward_pair(src, tgt)
    refs[2].feature_maps(torch.cat([src, tgt]))
    torch.testing.assert_close(
        next(m for m in shared.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean,
        plain[2].running_mean)


def test_source_classifier_starts_as_the_baselines_with_the_bnneck_folded_in(tmp_path):
    torch.manual_seed(0)
    baseline = Baseline(num_classes=8, **{k: v for k, v in NET.items() if k != "decoder_grid"})
    with torch.no_grad():  # a Baseline with non-trivial BNNeck statistics and weights
        baseline.neck.bn.running_mean.normal_()
        baseline.neck.bn.running_var.uniform_(0.5, 2.0)
        baseline.neck.bn.weight.uniform_(0.5, 1.5)
        baseline.neck.classifier.weight.normal_()
    path = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": baseline.state_dict()}, path)
    model = ARN(num_classes=8, pretrained=str(path), encoder="layer4", **NET).eval()
    baseline.eval()
    x = images(3, 32, 16)
    with torch.no_grad():
        expected = baseline.neck(baseline.pool(baseline.backbone(x)))[1]
        logits = model.classifier(model(x))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # the paper's fcn encoders start from random weights, and so does C_S
    fcn = ARN(num_classes=8, pretrained=str(path), encoder="fcn", **NET)
    assert not torch.allclose(fcn.classifier[1].weight, model.classifier[1].weight)
