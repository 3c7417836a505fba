"""MeanTeacher and pseudo-label quality, against hand computations."""

import copy
import itertools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from reidlab.callbacks import MeanTeacher, update_momentum
from reidlab.metrics import pseudo_label_quality


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_update_momentum_matches_hand_computation():
    student = _net()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(8, 3))  # moves the student's BN statistics
    t0 = [p.clone() for p in teacher.parameters()]
    update_momentum(student, teacher, 0.9, buffers="own")
    for t, s, before in zip(teacher.parameters(), student.parameters(), t0, strict=True):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * s)
    assert not torch.equal(teacher[1].running_mean, student[1].running_mean)  # "own"
    update_momentum(student, teacher, 0.5, buffers="copy")
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)
    assert teacher[1].num_batches_tracked == student[1].num_batches_tracked


def test_momentum_warmup_schedule():
    cb = MeanTeacher(alpha=0.999)
    assert cb.momentum(1) == 0.5 and cb.momentum(3) == 0.75
    assert cb.momentum(10**6) == 0.999
    assert MeanTeacher(alpha=0.9, warmup=False).momentum(1) == 0.9
    with pytest.raises(ValueError, match="buffers"):
        MeanTeacher(buffers="ema")


class _TeacherModule(pl.LightningModule):
    def __init__(self, in_optimizer: bool = False) -> None:
        super().__init__()
        self.student = _net()
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.in_optimizer = in_optimizer
        self.seen: list[tuple[int, list[torch.Tensor]]] = []

    def training_step(self, batch, batch_idx):
        return self.student(batch[0]).pow(2).mean()

    def on_train_batch_start(self, batch, batch_idx):
        self.seen.append((self.global_step, [p.detach().clone()
                                             for p in self.teacher.parameters()]))

    def configure_optimizers(self):
        params = self.parameters() if self.in_optimizer else self.student.parameters()
        return torch.optim.SGD(params, lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(24, 3))
        return torch.utils.data.DataLoader(data, batch_size=8)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def test_mean_teacher_callback_follows_the_warmup_ema_of_every_step():
    module = _TeacherModule()
    students = []

    class Record(pl.Callback):  # the student right after each optimizer step
        def on_train_batch_end(self, trainer, pl_module, *args):
            students.append([p.detach().clone() for p in pl_module.student.parameters()])

    cb = MeanTeacher(alpha=0.6)
    _trainer(callbacks=[Record(), cb]).fit(module)
    teacher = [p.detach().clone() for p in module.seen[0][1]]
    for step, student in enumerate(students, start=1):
        a = min(1 - 1 / (step + 1), 0.6)
        teacher = [a * t + (1 - a) * s for t, s in zip(teacher, student, strict=True)]
    for got, want in zip(module.teacher.parameters(), teacher, strict=True):
        torch.testing.assert_close(got, want)
    assert all(p.grad is None for p in module.teacher.parameters())


def test_mean_teacher_refuses_a_teacher_in_the_optimizer():
    with pytest.raises(ValueError, match="teacher parameter is in an optimizer"):
        _trainer(callbacks=[MeanTeacher()]).fit(_TeacherModule(in_optimizer=True))


def _pairs_reference(labels, ids):
    same_pred = same_both = same_true = 0
    for a, b in itertools.combinations(range(len(labels)), 2):
        pred = labels[a] >= 0 and labels[a] == labels[b]
        true = ids[a] == ids[b]
        same_pred += pred
        same_true += true
        same_both += pred and true
    return same_both / same_pred, same_both / same_true


def test_pseudo_label_quality_against_pair_counting():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, 60)
    labels = np.where(rng.random(60) < 0.7, ids, rng.integers(0, 4, 60))
    labels[rng.random(60) < 0.15] = -1
    q = pseudo_label_quality(labels, ids)
    precision, recall = _pairs_reference(labels, ids)
    assert q["pair_precision"] == pytest.approx(precision)
    assert q["pair_recall"] == pytest.approx(recall)
    assert q["outlier_fraction"] == pytest.approx((labels < 0).mean())
    assert q["num_clusters"] == len(set(labels[labels >= 0]))
    singletons = labels.copy()
    singletons[labels < 0] = 100 + np.arange((labels < 0).sum())
    assert q["ari"] == pytest.approx(adjusted_rand_score(ids, singletons))
    perfect = pseudo_label_quality(ids, ids)
    assert perfect["ari"] == perfect["nmi"] == perfect["pair_precision"] == 1.0


def test_pseudo_label_quality_all_outliers():
    q = pseudo_label_quality(np.full(5, -1), np.array([0, 0, 1, 1, 2]))
    assert q["num_clusters"] == 0 and q["outlier_fraction"] == 1.0
    assert q["pair_precision"] == 0.0 and q["pair_recall"] == 0.0


def _blobs(sizes, dim=16, spread=0.02, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(len(sizes), dim, generator=gen), dim=1)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(sizes))
    return centres[ids] + spread * torch.randn(len(ids), dim, generator=gen), ids.numpy()


def test_pseudo_labeling_cluster_recovers_blobs_and_survives_degenerate_input():
    from reidlab.callbacks import PseudoLabeling

    feats, ids = _blobs([12, 12, 12])
    labels = PseudoLabeling(k1=8, k2=3).cluster(feats)
    assert adjusted_rand_score(ids, labels) == 1.0
    one, _ = _blobs([20])
    assert set(PseudoLabeling(k1=8, k2=3).cluster(one)) == {0}  # a single cluster
    few, _ = _blobs([3])
    assert (PseudoLabeling(min_samples=4).cluster(few) == -1).all()  # N < min_samples
    assert PseudoLabeling().cluster(torch.zeros(0, 16)).shape == (0,)
    agg = PseudoLabeling(method="agglomerative", distance="cosine", n_clusters=3)
    assert adjusted_rand_score(ids, agg.cluster(feats)) == 1.0
