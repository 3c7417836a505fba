"""IICS: score Jaccard (eq. 9), the inter-camera distance (eq. 5), per-camera clustering,
the stage schedule, a CLI fit of one round and resume inside a round."""

import csv
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from reidlab.callbacks import IICSStages
from reidlab.cli import main
from reidlab.clustering import agglomerative, score_jaccard
from reidlab.clustering.scores import l1_distances
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import IICS, Baseline
from tests.helpers import assert_same_state, synthetic_cli_args

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}
NET = {"backbone": "resnet18", "backbone_width": 0.25, "weights": None}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def test_score_jaccard_matches_the_min_max_formula():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(7, 12, generator=gen, dtype=torch.float64)
    b = torch.rand(5, 12, generator=gen, dtype=torch.float64)
    a[0] = 0  # an all-zero vector
    b[1, :6] = 0
    expected = torch.empty(7, 5, dtype=torch.float64)
    for i in range(7):
        for j in range(5):
            union = torch.maximum(a[i], b[j]).sum()
            expected[i, j] = torch.minimum(a[i], b[j]).sum() / union if union > 0 else 0.0
    torch.testing.assert_close(score_jaccard(a, b), expected)
    s = torch.softmax(torch.randn(6, 10, generator=gen), 1)
    torch.testing.assert_close(torch.diagonal(score_jaccard(s, s)), torch.ones(6))
    with pytest.raises(ValueError, match="scores"):
        score_jaccard(a, b[:, :3])


def test_l1_kernel_matches_cdist_across_block_edges():
    """The CPU kernel works in tasks of 4 rows x 32 columns: sizes off those multiples,
    a strided input and both float widths against torch.cdist."""
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        a = torch.rand(38, 2 * 71, generator=gen, dtype=dtype)[:, ::2]  # not contiguous
        b = torch.rand(67, 71, generator=gen, dtype=dtype)
        got = l1_distances(a, b)
        assert got.dtype == dtype and got.shape == (38, 67)
        torch.testing.assert_close(got, torch.cdist(a[None], b[None], p=1)[0])
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernel follows torch's thread count and leaves numba's
    try:
        threads = numba.get_num_threads()
        torch.testing.assert_close(l1_distances(a, b), torch.cdist(a[None], b[None], p=1)[0])
        assert numba.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 cores to differ")
def test_inter_camera_clustering_leaves_torch_thread_count_alone():
    """numba's OpenMP threading layer shares torch's libgomp: restoring numba's thread count
    after the L1 kernel reset torch's too, so a ``--threads 1`` IICS run trained on 2
    threads after its first inter-camera clustering (2-3x slower with two runs side by
    side). Run in a fresh process: the effect depends on the process's OpenMP state."""
    code = ("import numpy as np, torch\n"
            "torch.set_num_threads(1)\n"
            "from reidlab.modules import IICS\n"
            "m = IICS(backbone='resnet18', backbone_width=0.25, weights=None,"
            " inter_clusters=5, chunk_size=40)\n"
            "m.build_heads([0, 1, 2], [3, 3, 3], 5)\n"
            "cams = np.repeat([0, 1, 2], [60, 50, 70])\n"
            "m.inter_camera_labels(torch.randn(len(cams), m.feature_dim), cams, rnd=1)\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    assert out.stdout.split()[-1] == "1"


def _model(cameras, capacities, inter=4, **kw) -> IICS:
    model = IICS(**(NET | {"inter_clusters": inter} | kw))
    model.build_heads(cameras, capacities, inter)
    return model


def test_small_cameras_get_fewer_clusters_without_affecting_later_cameras():
    camids = np.array([3] * 10 + [5] * 2 + [7] * 9)   # camera 5 has 2 images
    sizes = np.unique(camids, return_counts=True)[1]
    model = _model([3, 5, 7], np.minimum(sizes, 4))
    features = torch.randn(len(camids), 16, generator=torch.Generator().manual_seed(0))
    labels = model.intra_camera_labels(features, camids)
    offsets = model.camera_offsets.tolist()
    assert offsets == [0, 4, 6]
    for c, cam in enumerate([3, 5, 7]):
        local = labels[camids == cam] - offsets[c]
        assert sorted(set(local)) == list(range(min(4, (camids == cam).sum())))
        # the camera's own agglomerative clustering, numbered from its offset
        f = F.normalize(features[camids == cam], dim=1)
        expected = agglomerative((1 - f @ f.T).numpy(), n_clusters=len(set(local)))
        np.testing.assert_array_equal(local, expected)


def test_rerank_feature_distance_mixes_jaccard_and_cosine():
    from reidlab.clustering import jaccard_distance

    camids = np.array([0] * 30 + [1] * 3)   # camera 1 is smaller than k1
    model = _model([0, 1], [5, 3], feature_distance="rerank", k1=6, k2=3, rerank_lambda=0.3)
    features = torch.randn(len(camids), 16, generator=torch.Generator().manual_seed(2))
    f = F.normalize(features, dim=1)
    dense = np.ones((len(camids), len(camids)), dtype=np.float32)
    stored = jaccard_distance(f, 6, 3).tocoo()
    dense[stored.row, stored.col] = stored.data
    expected = 0.7 * dense + 0.3 * (1 - f @ f.T).numpy()
    rows = model.feature_distance_rows(features)
    np.testing.assert_allclose(torch.cat([rows(0, 20), rows(20, 33)]).numpy(), expected,
                               atol=1e-6)
    np.testing.assert_allclose(rows(5, 20, 12).numpy(), expected[5:20, 12:], atol=1e-6)
    labels = model.intra_camera_labels(features, camids)
    assert sorted(set(labels[camids == 1])) == [5, 6, 7]


def test_inter_camera_distance_is_eq5_built_blockwise():
    gen = torch.Generator().manual_seed(1)
    camids = np.array([0] * 6 + [1] * 5 + [2] * 7)
    model = _model([0, 1, 2], [3, 3, 3], inter=5, chunk_size=4, mu=0.3, rounds=4)
    for clf in model.camera_classifiers:
        clf.weight.data.normal_(generator=gen)
    features = torch.randn(len(camids), model.feature_dim, generator=gen) + 0.5
    # direct computation: per-camera softmax scores, Jaccard, eq. 5 with mu_t for round 1
    bn = model.neck.bn.eval()
    with torch.no_grad():
        x = bn(features)
        s = torch.cat([torch.softmax(clf(x), 1) for clf in model.camera_classifiers], 1)
    mins = torch.minimum(s[:, None], s[None]).sum(-1)
    maxs = torch.maximum(s[:, None], s[None]).sum(-1)
    f = F.normalize(features, dim=1)
    cross = torch.as_tensor(camids[:, None] != camids[None, :])
    mu_t = 0.3 * (1 - 1 / 4) ** 0.6
    assert model.mu_at(1) == pytest.approx(mu_t)
    assert model.mu_at(4) == 0.0
    dist = (1 - f @ f.T) - mu_t * (mins / maxs) * cross
    expected = agglomerative(dist.double().numpy(), n_clusters=5)
    np.testing.assert_array_equal(model.inter_camera_labels(features, camids, rnd=1), expected)
    model.hparams.inter_similarity = "eq9"
    expected = agglomerative((1 - mins / maxs).double().numpy(), n_clusters=5)
    np.testing.assert_array_equal(model.inter_camera_labels(features, camids, rnd=1), expected)


def test_stage_schedule_and_argument_checks():
    model = IICS(**NET, intra_epochs=2, inter_epochs=1)
    got = [model.stage_at(e) for e in range(6)]
    assert got == [("intra", 0, 0), ("intra", 0, 0), ("inter", 0, 2),
                   ("intra", 1, 3), ("intra", 1, 3), ("inter", 1, 5)]
    assert IICS(**NET, inter_epochs=0).stage_at(7) == ("intra", 3, 6)   # stage 1 only
    stage2 = IICS(**NET, intra_epochs=0, inter_similarity="cnn")  # stage 2 only
    assert stage2.stage_at(3) == ("inter", 1, 2)
    with pytest.raises(ValueError, match="never trains the camera classifiers"):
        IICS(**NET, intra_epochs=0)
    with pytest.raises(ValueError, match="at least one epoch"):
        IICS(**NET, intra_epochs=0, inter_epochs=0)
    with pytest.raises(ValueError, match="exactly one"):
        IICS(**NET, inter_clusters=None)
    with pytest.raises(ValueError, match="inter_similarity"):
        IICS(**NET, inter_similarity="eq6")


def test_pretrained_baseline_backbone_is_loaded_before_the_aibn_conversion(tmp_path):
    baseline = Baseline(num_classes=8, **NET)
    for m in baseline.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": baseline.state_dict()}, path)
    model = IICS(pretrained=str(path), **NET)
    torch.testing.assert_close(model.backbone.layer4[0].bn1.running_mean,
                               baseline.backbone.layer4[0].bn1.running_mean)
    assert type(model.backbone.layer4[0].bn1).__name__ == "AIBN"


def test_cli_fit_runs_one_round_with_both_stages(tmp_path):
    main(["fit", *synthetic_cli_args(
        "iics.yaml", tmp_path, "--model.init_args.rounds", "1",
        "--model.init_args.intra_epochs", "1", "--model.init_args.inter_epochs", "1",
        "--model.init_args.intra_clusters", "4", "--model.init_args.inter_clusters", "8",
        "--data.init_args.num_per_camera", "2")])
    rows = list(csv.DictReader(next(Path(tmp_path).rglob("metrics.csv")).open()))
    intra = [r for r in rows if r.get("train/intra")]
    inter = [r for r in rows if r.get("train/ce")]
    assert len(intra) == 2 and len(inter) == 2  # 2 batches of each stage
    assert all(float(r["train/loss"]) > 0 for r in intra + inter)
    clusters = [float(r["pseudo/num_clusters"]) for r in rows if r.get("pseudo/num_clusters")]
    assert clusters[1] == 8  # the inter-camera stage's count
    assert any(r.get("val/mAP") for r in rows)
    assert [float(r["pseudo/inter_stage"]) for r in rows if r.get("pseudo/inter_stage")] == [0, 1]
    assert list(Path(tmp_path).rglob("figures/pseudo_quality_epoch*.png"))


def test_a_datamodule_with_a_source_is_refused(tmp_path):
    dm = CrossDomainDataModule(source_kwargs=TINY, target_kwargs=TINY, height=32, width=16,
                               num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="source=None"):
        trainer.fit(IICS(**NET), dm)


def _dm() -> CrossDomainDataModule:
    return CrossDomainDataModule(source=None, target_kwargs=TINY, height=32, width=16,
                                 num_ids=2, num_instances=4, num_per_camera=2, num_workers=0,
                                 flip_p=0.0, padding=0, erasing_p=0.0)


def _run(tmp_path: Path, ckpt_path: str | None = None, val: bool = False):
    pl.seed_everything(0)
    dm = _dm()
    model = IICS(**NET, intra_epochs=2, inter_epochs=1, rounds=2, intra_clusters=4,
                 inter_clusters=8)
    stages = IICSStages(flip=True)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1,
                                         filename="{epoch}", save_on_train_epoch_end=not val)
    callbacks = [stages, saver]
    if val:  # checkpoints are then saved after validation, before the epoch-end hooks
        from reidlab.callbacks import RetrievalEvaluation
        callbacks.append(RetrievalEvaluation(num_figure_queries=0))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=6, limit_train_batches=2,
                         limit_val_batches=1 if val else 0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                         use_distributed_sampler=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path), deterministic=True,
                         callbacks=callbacks)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, dm, stages


@pytest.mark.parametrize("epoch, val", [(0, False), (1, False), (1, True)],
                         ids=["inside-the-intra-stage", "before-inter-stage",
                              "saved-after-validation"])
def test_resume_inside_a_round_matches_the_uninterrupted_run(tmp_path, epoch, val):
    full, full_dm, full_stages = _run(tmp_path / "full", val=val)
    assert [h["inter_stage"] for h in full_stages.history] == [0.0, 1.0, 0.0, 1.0]
    assert full_dm.label_sampler == "pk"
    ckpt = tmp_path / "full" / "ckpt" / f"epoch={epoch}.ckpt"
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    saved_epoch = next(v["labels_epoch"] for k, v in saved.items() if "IICSStages" in k)
    # saved after validation: before the epoch-end clustering, which the resumed run redoes
    assert saved_epoch == (0 if epoch == 0 or val else 2)
    resumed, resumed_dm, resumed_stages = _run(tmp_path / "resumed", str(ckpt), val=val)
    np.testing.assert_array_equal(full_stages.labels, resumed_stages.labels)
    np.testing.assert_array_equal(full_dm.pseudo_labels, resumed_dm.pseudo_labels)
    # the same clusterings, none twice
    assert ([h["epoch"] for h in resumed_stages.history]
            == [h["epoch"] for h in full_stages.history] == [0, 2, 3, 5])
    assert_same_state(resumed, full)
    loaded = IICS.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.inter_classifier.out_features == 8
    assert loaded.extract_features(torch.randn(2, 3, 32, 16)).shape == (2, loaded.feature_dim)


def test_max_epochs_must_match_the_rounds(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"max_epochs=3 but rounds=2 x .* = 4"):
        trainer.fit(IICS(**NET, rounds=2, intra_epochs=1, inter_epochs=1), _dm())
