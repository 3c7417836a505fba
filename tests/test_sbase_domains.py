"""SBase / DCDFA across domains: domain-specific BatchNorm, the feature spaces of the memory,
L_CID and the target classifier, checked against plain-BN references and hand formulas."""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidlab.callbacks.mean_teacher import update_momentum
from reidlab.losses import cross_domain_id_loss, memory_contrastive_loss
from reidlab.modules import DCDFA, SBase
from reidlab.nn import DomainBatchNorm

NET = {"backbone": "resnet18", "backbone_width": 0.25, "weights": None}


def images(n: int, shift: float, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(seed)) + shift


def pair(**kw) -> tuple[SBase, SBase]:
    """Two SBase models with the same weights: domain-specific and shared BN."""
    torch.manual_seed(0)
    dsbn = SBase(num_classes=8, **NET, **kw)
    torch.manual_seed(0)
    shared = SBase(num_classes=8, domain_bn=False, **NET, **kw)
    return dsbn, shared


class EvalBatchNorm(nn.Module):
    """An eval-mode BatchNorm with fixed statistics and affine parameters (any input rank)."""

    def __init__(self, mean, var, weight, bias, eps) -> None:
        super().__init__()
        self.stats = [t.detach().clone() for t in (mean, var, weight, bias)]
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, *self.stats, False, 0.0, self.eps)


def plain_copy(module: nn.Module, domain: int) -> nn.Module:
    """``module`` with every DomainBatchNorm replaced by a fixed BN holding ``domain``'s
    statistics and affine parameters (the reference for eval-mode outputs)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, DomainBatchNorm):
                w, b = child.weight, child.bias
                if child.per_domain_affine:
                    w, b = w[domain], b[domain]
                setattr(parent, name, EvalBatchNorm(child.running_mean[domain],
                                                    child.running_var[domain], w, b, child.eps))
    return module


def bns(module: nn.Module, kind) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_each_domain_trains_its_own_statistics_and_shared_bn_is_plain_bn():
    dsbn, shared = pair(mean_teacher=False, memory_bank=False)
    assert not bns(shared, DomainBatchNorm) and bns(shared.student, nn.BatchNorm2d)
    assert len(bns(dsbn.student, DomainBatchNorm)) == len(bns(shared.student, nn.BatchNorm2d))
    assert isinstance(dsbn.neck.bn, DomainBatchNorm)
    src, tgt = images(8, 0.0, 1), images(8, 1.5, 2)
    # references: the shared-BN model fed one domain only, from the same start
    ref_s, ref_t = copy.deepcopy(shared).train(), copy.deepcopy(shared).train()
    dsbn.train()
    out_s = dsbn.forward_domain(src, 0)
    out_t = dsbn.forward_domain(tgt, 1)
    ref_out_s, ref_out_t = ref_s.forward_domain(src, 0), ref_t.forward_domain(tgt, 1)
    # training batches are normalised with their own statistics: same outputs as plain BN
    torch.testing.assert_close(out_s["bn"], ref_out_s["bn"])
    torch.testing.assert_close(out_t["bn"], ref_out_t["bn"])
    for d, ref in ((0, ref_s), (1, ref_t)):
        for layer, plain in zip(bns(dsbn, DomainBatchNorm),
                                bns(ref.student, nn.BatchNorm2d) + [ref.neck.bn], strict=True):
            torch.testing.assert_close(layer.running_mean[d], plain.running_mean)
            torch.testing.assert_close(layer.running_var[d], plain.running_var)
    # the two domains' statistics differ (the target images are shifted)
    first = bns(dsbn, DomainBatchNorm)[0]
    assert not torch.allclose(first.running_mean[0], first.running_mean[1])
    # test features use the target's statistics, like the target-only reference
    torch.testing.assert_close(dsbn.extract_features(tgt), ref_t.extract_features(tgt))
    assert not torch.allclose(dsbn.extract_features(tgt), ref_s.extract_features(tgt))


def test_state_dict_round_trip_keeps_both_domains():
    dsbn, _ = pair(mean_teacher=False, memory_bank=False, per_domain_affine=True)
    dsbn.train()
    dsbn.forward_domain(images(8, 0.0, 1), 0)
    dsbn.forward_domain(images(8, 1.5, 2), 1)
    torch.manual_seed(1)
    fresh = SBase(num_classes=8, mean_teacher=False, memory_bank=False, per_domain_affine=True,
                  **NET)
    fresh.load_state_dict(dsbn.state_dict())
    x = images(4, 1.5, 3)
    torch.testing.assert_close(fresh.extract_features(x), dsbn.extract_features(x))
    assert dsbn.neck.bn.weight.shape == (2, dsbn.feature_dim)


def test_teacher_copies_both_domains_and_tests_with_the_targets():
    model = SBase(num_classes=8, memory_bank=False, **NET).train()
    for step in range(2):
        model.forward_domain(images(8, 0.0, 10 + step), 0)
        model.forward_domain(images(8, 1.5, 20 + step), 1)
        update_momentum(model.student, model.teacher, 0.5)
    for t, s in zip(bns(model.teacher, DomainBatchNorm), bns(model.student, DomainBatchNorm),
                    strict=True):
        torch.testing.assert_close(t.running_mean, s.running_mean)
    x = images(4, 1.5, 3)
    reference = plain_copy(model.teacher, 1).eval()
    with torch.no_grad():
        expected = reference(x)[1]
    torch.testing.assert_close(model.extract_features(x), expected)
    with torch.no_grad():
        wrong = plain_copy(model.teacher, 0).eval()(x)[1]
    assert not torch.allclose(expected, wrong)


def neck_by_hand(bn: DomainBatchNorm, feats: torch.Tensor, domain: int | None) -> torch.Tensor:
    """BNNeck feature: batch statistics (domain None) or the domain's running ones."""
    if domain is None:
        mean, var = feats.mean(0), feats.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean[domain], bn.running_var[domain]
    return (feats - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def test_memory_loss_is_on_the_bnneck_feature():
    model = SBase(num_classes=4, mean_teacher=False, **NET)
    model.build_target(6)
    model.memory.init_source(F.normalize(torch.randn(8, model.feature_dim)),
                             torch.arange(8) % 4)
    model.memory.init_target(F.normalize(torch.randn(6, model.feature_dim)))
    model.num_target_clusters.fill_(2)
    model.target_labels.copy_(torch.tensor([0, 0, 1, 1, -1, -1]))
    memory_before = copy.deepcopy(model.memory)
    s_pid, t_pid, t_idx = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, -1]), \
        torch.tensor([0, 1, 2, 4])
    batch = {"source": (images(4, 0.0, 1), s_pid, torch.zeros(4), torch.arange(4)),
             "target": (images(4, 1.5, 2), t_pid, torch.zeros(4), t_idx)}
    model.train()
    losses, out = model.training_losses(batch)
    bn_s = neck_by_hand(model.neck.bn, out["source"]["f"], None)
    bn_t = neck_by_hand(model.neck.bn, out["target"]["f"], None)
    torch.testing.assert_close(out["source"]["bn"], bn_s)
    is_source = torch.tensor([True] * 4 + [False] * 4)
    expected = memory_contrastive_loss(torch.cat([bn_s, bn_t]), torch.cat([s_pid, t_pid]),
                                       is_source, memory_before, model.target_labels)
    torch.testing.assert_close(losses["memory"], expected)
    on_f = memory_contrastive_loss(torch.cat([out["source"]["f"], out["target"]["f"]]),
                                   torch.cat([s_pid, t_pid]), is_source, memory_before,
                                   model.target_labels)
    assert not torch.allclose(losses["memory"], on_f)
    # the memory moved towards the normalised BNNeck features (momentum 0.2)
    row = F.normalize(0.2 * memory_before.target[0] + 0.8 * F.normalize(bn_t[0], dim=0), dim=0)
    torch.testing.assert_close(model.memory.target[0], row)


def test_target_classifier_starts_from_centres_of_the_bnneck_feature():
    model = SBase(num_classes=4, mean_teacher=False, memory_bank=False, **NET)
    model.build_target(6)
    bn = model.neck.bn
    with torch.no_grad():  # distinct target statistics
        bn.running_mean[1].normal_()
        bn.running_var[1].uniform_(0.5, 2.0)
    feats = torch.randn(6, model.feature_dim)
    labels = np.array([0, 0, 1, -1, 1, 1])
    model.on_pseudo_labels(labels, torch.zeros(2, model.feature_dim), feats)
    by_hand = neck_by_hand(bn, feats, 1)
    centres = torch.stack([by_hand[[0, 1]].mean(0), by_hand[[2, 4, 5]].mean(0)])
    torch.testing.assert_close(model.target_classifier[:2], F.normalize(centres, dim=1))
    assert int(model.num_target_clusters) == 2 and bool(model.training)


def test_cid_compares_bnneck_features_normalised_with_their_domains_batch():
    torch.manual_seed(0)
    model = DCDFA(num_classes=4, mean_teacher=False, memory_bank=False, domain=False,
                  base_reid=False, domain_dropout=0.0, **NET)
    model.build_target(6)
    batch = {"source": (images(4, 0.0, 1), torch.tensor([0, 0, 1, 1]), torch.zeros(4),
                        torch.arange(4)),
             "target": (images(4, 1.5, 2), torch.tensor([-1] * 4), torch.zeros(4),
                        torch.arange(4))}
    model.train()
    losses, out = model.training_losses(batch)
    src, tgt = out["source"], out["target"]
    m_s, m_t = model.student.attention(src["fmap"]), model.student.attention(tgt["fmap"])
    j = model.pairing(4, 4, torch.device("cpu"))
    r_t = m_s * src["f"] + ((1 - m_t) * tgt["f"])[j]
    r_s = (m_t * tgt["f"])[j] + (1 - m_s) * src["f"]
    bn = model.neck.bn

    def with_stats(x, ref):
        return (x - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + bn.eps) \
            * bn.weight + bn.bias

    expected = cross_domain_id_loss(with_stats(src["f"], src["f"]),
                                    with_stats(tgt["f"], tgt["f"])[j],
                                    with_stats(r_s, src["f"]), with_stats(r_t, tgt["f"]),
                                    model.tau)
    torch.testing.assert_close(losses["cid"], expected)
    # the recompositions leave the running statistics alone: only the two real batches
    # (one per domain) were counted
    assert bn.num_batches_tracked.tolist() == [1, 1]


def test_first_clustering_sees_target_statistics_estimated_on_the_target(tmp_path):
    import pytorch_lightning as pl

    from reidlab.callbacks import PseudoLabeling
    from reidlab.datamodules import CrossDomainDataModule
    from reidlab.nn import reestimate_bn_statistics

    tiny = {"num_train_ids": 6, "num_test_ids": 4, "images_per_id": 5, "height": 64,
            "width": 32}
    dm = CrossDomainDataModule(source_kwargs=tiny, target="synthetic:street", target_kwargs=tiny,
                               height=32, width=16, num_ids=2, num_instances=4, num_workers=0)
    torch.manual_seed(0)
    model = SBase(num_classes=6, memory_bank=False, **NET)
    torch.manual_seed(0)  # the same start with plain BN, re-estimated by hand below
    plain = SBase(num_classes=6, memory_bank=False, domain_bn=False, **NET)
    first_plain = next(m for m in plain.student.modules() if isinstance(m, nn.BatchNorm2d))
    start = first_plain.running_mean.clone()
    seen = {}

    class Spy(PseudoLabeling):
        def recluster(self, trainer, pl_module, for_epoch=None):
            if not seen:
                layer = next(m for m in pl_module.teacher.modules()
                             if isinstance(m, DomainBatchNorm))
                seen["teacher"] = layer.running_mean.clone()
            return super().recluster(trainer, pl_module, for_epoch)

    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1,
                         limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, default_root_dir=str(tmp_path),
                         callbacks=[Spy(eps=0.9, min_samples=2, k1=6, k2=2)])
    trainer.fit(model, dm)
    loader = dm.eval_dataloader(dm.target_data.train)
    reestimate_bn_statistics(torch.nn.ModuleList([plain.student, plain.neck]),
                             (b[0] for b in loader),
                             lambda x: plain.neck.bn(plain.student(x)[1]))
    torch.testing.assert_close(seen["teacher"][1], first_plain.running_mean)
    torch.testing.assert_close(seen["teacher"][0], start)  # the source's are kept
    assert not torch.allclose(start, first_plain.running_mean)
    assert bool(model.target_statistics_ready)
