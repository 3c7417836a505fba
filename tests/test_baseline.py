import pytest
import pytorch_lightning as pl
import torch

from reidlab.callbacks import RetrievalEvaluation
from reidlab.datamodules import ReIDDataModule
from reidlab.datasets import ReIDImageDataset
from reidlab.losses import batch_hard_triplet_loss
from reidlab.metrics import evaluate_from_features
from reidlab.modules import Baseline

TINY = {"num_train_ids": 16, "num_test_ids": 12, "images_per_id": 8, "height": 64, "width": 32}


def make_trainer(tmp_path, **kwargs) -> tuple[pl.Trainer, RetrievalEvaluation]:
    evaluation = RetrievalEvaluation(num_figure_queries=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False,
                         default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[evaluation], num_sanity_val_steps=0, **kwargs)
    return trainer, evaluation


def test_triplet_loss_against_hand_computation():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive 5 (to 1), hardest negative 1 (to 2) -> 5 - 1 + 0.3
    # anchor 1: positive 5, negatives |(3,4)-(1,0)|=sqrt(20), |(3,4)-(0,2)|=sqrt(13)
    # anchor 2: positive sqrt(5), negatives 1, sqrt(20) -> sqrt(5) - 1 + 0.3
    # anchor 3: positive sqrt(5), negatives 2, sqrt(13) -> sqrt(5) - 2 + 0.3
    expected = [5 - 1 + 0.3, max(0.0, 5 - 13 ** 0.5 + 0.3), 5 ** 0.5 - 0.7, 5 ** 0.5 - 1.7]
    got = batch_hard_triplet_loss(x, pids, margin=0.3)
    assert torch.isclose(got, torch.tensor(expected).mean(), atol=1e-5)
    soft = batch_hard_triplet_loss(x, pids, margin=None)
    gaps = torch.tensor([5 - 1, 5 - 13 ** 0.5, 5 ** 0.5 - 1, 5 ** 0.5 - 2])
    assert torch.isclose(soft, torch.nn.functional.softplus(gaps).mean(), atol=1e-5)


def test_lr_schedule_warmup_and_steps():
    model = Baseline(num_classes=3, backbone="resnet18", weights=None, warmup_epochs=10,
                     warmup_factor=0.01, milestones=(40, 70), gamma=0.1)
    assert model.lr_factor(0) == 0.01
    assert abs(model.lr_factor(5) - (0.01 * 0.5 + 0.5)) < 1e-12
    assert model.lr_factor(10) == 1.0 and model.lr_factor(39) == 1.0
    assert abs(model.lr_factor(40) - 0.1) < 1e-12 and abs(model.lr_factor(75) - 0.01) < 1e-12


def test_last_stride_one_doubles_the_map():
    images = torch.randn(2, 3, 64, 32)
    for name in ("resnet18", "resnet50"):
        s1 = Baseline(num_classes=3, backbone=name, weights=None, last_stride=1)
        s2 = Baseline(num_classes=3, backbone=name, weights=None, last_stride=2)
        assert s1.backbone(images).shape[-2:] == (4, 2)
        assert s2.backbone(images).shape[-2:] == (2, 1)


def train_set_map(model: Baseline, dm: ReIDDataModule) -> float:
    """mAP of the training images retrieving each other (test transform, cosine)."""
    records = dm.data.train
    dataset = ReIDImageDataset(records, dm.test_transform)
    feats = model.extract_features(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    pids, cams = [r.pid for r in records], [r.camid for r in records]
    return float(evaluate_from_features(feats, feats, pids, pids, cams, cams,
                                        metric="cosine")["mAP"])


def test_training_beats_untrained_and_checkpoint_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))
    pl.seed_everything(0)
    dm = ReIDDataModule("synthetic:mall", dataset_kwargs=TINY, height=64, width=32,
                        num_ids=8, num_instances=4, num_workers=0, eval_batch_size=64,
                        iters_per_epoch=20)
    dm.prepare_data()
    # retrieval among the training images: a random-init net does not generalise to the
    # 12 unseen test ids in a few epochs (their mAP moved by less than the noise, either
    # way, with the thread count), but it learns its training ids (0.17 -> 0.6-0.7 here)
    model = Baseline(num_classes=dm.num_classes, backbone="resnet18", weights=None,
                     backbone_width=0.25, warmup_epochs=0, lr=1e-3)
    untrained = train_set_map(model, dm)
    trainer, evaluation = make_trainer(tmp_path, max_epochs=6, check_val_every_n_epoch=6)
    trainer.fit(model, datamodule=dm)
    trained = train_set_map(model, dm)
    assert trained > untrained + 0.2, (untrained, trained)
    assert 0 < evaluation.last["mAP"] <= 1  # the held-out query / gallery evaluation ran

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = Baseline.load_from_checkpoint(ckpt)
    images = torch.randn(4, 3, 64, 32)
    assert torch.equal(model.extract_features(images), restored.extract_features(images))
    assert model.extract_features(images).shape == (4, 128)


def test_width_multiplier_narrows_the_backbone():
    full = Baseline(num_classes=3, backbone="resnet18", weights=None)
    narrow = Baseline(num_classes=3, backbone="resnet18", weights=None, backbone_width=0.25)
    assert narrow.feature_dim == 128 and full.feature_dim == 512
    n_full = sum(p.numel() for p in full.backbone.parameters())
    n_narrow = sum(p.numel() for p in narrow.backbone.parameters())
    assert n_narrow < n_full / 10
    assert narrow.extract_features(torch.randn(2, 3, 64, 32)).shape == (2, 128)
    assert Baseline(num_classes=3, backbone="resnet50", weights=None,
                    backbone_width=0.5).feature_dim == 1024


def test_backbone_weights_from_a_local_file(tmp_path):
    import torchvision

    from reidlab.nn import ResNetBackbone

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # checkpoint-style file
    loaded = ResNetBackbone("resnet18", weights=str(path))
    assert torch.equal(loaded.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.equal(loaded.stem[1].running_var, reference.bn1.running_var)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if "layer4" not in k}, partial)
    with pytest.raises(ValueError, match="lacks"):
        ResNetBackbone("resnet18", weights=str(partial))
    with pytest.raises(FileNotFoundError):
        ResNetBackbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown weights"):
        ResNetBackbone("resnet18", weights="IMAGENET9K")
