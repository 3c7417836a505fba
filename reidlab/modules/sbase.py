"""SBase: the strong clustering baseline of DCDFA (Zhang et al., "Disentanglement-based
Cross-Domain Feature Augmentation for Effective Unsupervised Domain Adaptive Person
Re-identification", CVPR 2021, Sec. 4.1 and Fig. 3).

Start from a Baseline trained on the labelled source; every epoch the target training set
is clustered (teacher features, k-reciprocal Jaccard distance, DBSCAN; the
:class:`~reidlab.callbacks.PseudoLabeling` callback) and the network is fine-tuned on
source labels + target pseudo-labels with the basic re-ID loss L_BReID (CE + triplet on
the pooled feature f), plus, as switches (paper Table 1):

* Mean-Net: a mean teacher (:class:`~reidlab.callbacks.MeanTeacher`) gives the clustering
  and test features; the student is discarded at test time;
* MB: a memory bank of source class prototypes and target instance features with a
  circle-re-weighted contrastive loss.

BatchNorm across domains. The paper does not say how BN treats the two domains. Source and
target batches are forwarded separately; with one shared BN the running statistics become
an average of alternating source and target batches, statistics the network never trains
with, and the clustering and test features are computed under them. reidlab uses
domain-specific BN by default (``domain_bn``; DSBN, Chang et al., CVPR 2019, as SpCL's
UDA pipeline does): every BN of the encoder and the BNNeck keeps running statistics per
domain (:class:`~reidlab.nn.DomainBatchNorm`), each training batch updates its own
domain's, and clustering, memory and test features use the target's. The target's
statistics start as those of the target training images (re-estimated before the first
clustering, as AdaBN does; ``init_target_statistics``), not as the source Baseline's, so
the first clustering already sees target-normalised features. ``domain_bn=False`` is the
single shared BN (the ``sbase_shared_bn`` ablation row).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from reidlab.callbacks.features import collect_features
from reidlab.callbacks.mean_teacher import MeanTeacher
from reidlab.callbacks.pseudo_labeling import PseudoLabeling
from reidlab.clustering import cluster_centers
from reidlab.datamodules.loader import data_loader
from reidlab.datasets import ReIDImageDataset
from reidlab.losses import batch_hard_triplet_loss, memory_contrastive_loss, zero_loss
from reidlab.modules.base import ReIDModule, load_baseline_parts
from reidlab.nn import (
    BNNeck,
    DomainBatchNorm,
    MemoryBank,
    bn_domain,
    build_backbone,
    build_pooling,
    convert_to_domain_bn,
    reestimate_bn_statistics,
)

SOURCE, TARGET = 0, 1  # domain indices of the DomainBatchNorm statistics


class Encoder(nn.Module):
    """Backbone + global pooling: ``images -> (feature map F, pooled feature f)``.

    ``bn_chunk`` splits a batch into chunks forwarded one by one, so BatchNorm statistics
    are computed on ``bn_chunk`` images (ghost batch norm), as on a multi-GPU run with that
    many images per device.

    ``attention`` (DCDFA's channel attention, None in SBase) is only held here, never
    applied by :meth:`forward`: the module that owns the encoder applies it to the feature
    map (:class:`~reidlab.modules.DCDFA`); keeping it inside the encoder makes the mean
    teacher average it with the rest, for the teacher's ``test_with_base`` feature.
    """

    def __init__(self, backbone: nn.Module, pool: nn.Module,
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.pool, self.attention = backbone, pool, attention

    def forward(self, images: torch.Tensor,
                bn_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if bn_chunk and len(images) > bn_chunk:
            fmaps = [self.backbone(chunk) for chunk in images.split(bn_chunk)]
            fmap = torch.cat(fmaps)
        else:
            fmap = self.backbone(images)
        return fmap, self.pool(fmap)


class SBase(ReIDModule):
    """SBase (paper Sec. 4.1): clustering-based UDA with mean teacher and memory bank.

    Batches come from :class:`~reidlab.datamodules.CrossDomainDataModule`: ``{"source":
    (img, pid, camid, idx), "target": (img, pseudo_pid, camid, idx)}``. The loss is
    ``L_BReID(source) + target_weight * L_BReID(target, pseudo-labels) + memory_weight *
    L_MB``; L_BReID = CE (label smoothing, on the BNNeck logits) + batch-hard triplet on f.
    Source logits come from the Baseline's classifier; target logits from a classifier
    re-initialised from the normalised cluster centres at every re-clustering (as in MMT).

    Needs the :class:`~reidlab.callbacks.PseudoLabeling` callback and, with
    ``mean_teacher=True``, :class:`~reidlab.callbacks.MeanTeacher`; either one missing from
    the trainer is added with the paper's settings (DBSCAN eps 0.6, min_samples 4, k1 30,
    k2 6; alpha 0.999). The target classifier has a fixed capacity (``max_target_clusters``,
    default: the number of target training images), so its parameter never changes shape:
    DDP and checkpoints stay valid whatever the cluster count.

    Batch-norm batch: source and target images are forwarded separately (each side is its
    own BN batch); ``bn_chunk`` splits further (16 reproduces the 4-GPU reference runs of
    64 + 64 images on one device). BN statistics are per domain (module docstring).

    Feature spaces: the triplet losses and the clustering use the pooled feature f (the
    paper's L_BReID); the memory bank and its circle loss use the L2-normalised BNNeck
    feature, the space the circle-loss thresholds (0.25 / 0.75) are designed for (on f,
    cosines within and across identities are both ~0.99; hybrid-memory methods such as
    SpCL also keep the normalised BN feature); the target classifier is applied to, and
    initialised from centres of, the BNNeck feature.

    Args:
        num_classes: source training identities (linked from the DataModule by the CLI).
        pretrained: Lightning checkpoint (or state dict) of a source-trained
            :class:`~reidlab.modules.Baseline`; None starts from ``weights``.
        backbone: as in the Baseline (ResNet variant or ``mobilenet_v2``).
        weights: backbone initialisation when not ``pretrained`` (``imagenet``, a file, None).
        last_stride: stride of the last backbone stage.
        backbone_width: channel multiplier (< 1 for CPU runs).
        pooling: ``avg``, ``max`` or ``gem``.
        mean_teacher: keep a mean teacher for clustering and test features (Mean-Net).
        memory_bank: add the memory-bank contrastive loss (MB).
        teacher_alpha: EMA momentum of the MeanTeacher added when none is configured.
        memory_momentum: memory update momentum (0.2).
        memory_margin: circle-loss margin m (0.25).
        memory_gamma: circle-loss scale gamma (128).
        memory_weight: weight of the memory loss.
        target_weight: weight of the target L_BReID.
        max_target_clusters: capacity of the target classifier (default: target images).
        label_smoothing: CE label smoothing.
        triplet_margin: triplet margin (None: soft margin).
        lr: Adam learning rate (3.5e-4).
        weight_decay: Adam weight decay.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: step decay factor.
        bn_chunk: images per BatchNorm batch (None: each domain's whole batch).
        domain_bn: domain-specific BatchNorm statistics (False: one shared BN, the
            ablation).
        per_domain_affine: with ``domain_bn``, per-domain BN weights and biases as well
            (DSBN's full form; default: shared affine parameters).
        init_target_statistics: with ``domain_bn``, re-estimate the target's statistics on
            the target training images before the first clustering (False: they start as
            the source Baseline's).
    """

    def __init__(
        self,
        num_classes: int = 0,
        pretrained: str | None = None,
        backbone: str = "resnet50",
        weights: str | None = "imagenet",
        last_stride: int = 1,
        backbone_width: float = 1.0,
        pooling: str = "avg",
        mean_teacher: bool = True,
        memory_bank: bool = True,
        teacher_alpha: float = 0.999,
        memory_momentum: float = 0.2,
        memory_margin: float = 0.25,
        memory_gamma: float = 128.0,
        memory_weight: float = 1.0,
        target_weight: float = 1.0,
        max_target_clusters: int | None = None,
        label_smoothing: float = 0.1,
        triplet_margin: float | None = 0.3,
        lr: float = 3.5e-4,
        weight_decay: float = 5e-4,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        bn_chunk: int | None = None,
        domain_bn: bool = True,
        per_domain_affine: bool = False,
        init_target_statistics: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"{type(self).__name__} needs num_classes >= 1 (source identities)")
        self.save_hyperparameters()
        net = build_backbone(backbone, None if pretrained else weights, last_stride,
                             backbone_width)
        channels = net.out_channels
        self.student = Encoder(net, build_pooling(pooling), self.build_attention(channels))
        self.neck = BNNeck(channels, num_classes)
        if pretrained:
            self.load_pretrained(pretrained)
        if domain_bn:  # after loading: the Baseline's statistics start both domains
            convert_to_domain_bn(self.student, per_domain_affine=per_domain_affine)
            convert_to_domain_bn(self.neck, per_domain_affine=per_domain_affine)
        # whether the target statistics were estimated on target images (checkpointed)
        self.register_buffer("target_statistics_ready", torch.tensor(False))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False) if mean_teacher else None
        # built in setup() once the target size is known (or from a checkpoint)
        self.target_classifier: nn.Parameter | None = None
        self.memory: MemoryBank | None = None
        self._target_init: torch.Tensor | None = None

    # -- construction ----------------------------------------------------------------------
    def build_attention(self, channels: int) -> nn.Module | None:
        """The encoder's attention module (none in SBase; DCDFA's channel attention)."""
        return None

    @property
    def feature_dim(self) -> int:
        return self.neck.bn.num_features

    def load_pretrained(self, path: str) -> None:
        """Backbone, pooling and BNNeck (source classifier) from a Baseline checkpoint."""
        load_baseline_parts(path, {"backbone.": self.student.backbone,
                                   "pool.": self.student.pool, "neck.": self.neck},
                            optional=("pool.",))

    def build_target(self, num_target: int, capacity: int | None = None) -> None:
        """Target classifier (``capacity`` rows) and memory bank for ``num_target`` images."""
        hp = self.hparams
        capacity = capacity or hp.max_target_clusters or num_target
        device = self.neck.bn.weight.device
        self.target_classifier = nn.Parameter(torch.zeros(capacity, self.feature_dim,
                                                          device=device))
        self.register_buffer("num_target_clusters", torch.zeros((), dtype=torch.long,
                                                                device=device))
        self.register_buffer("target_labels", torch.full((num_target,), -1, dtype=torch.long,
                                                         device=device))
        if hp.memory_bank:
            self.memory = MemoryBank(self.feature_dim, hp.num_classes, num_target,
                                     momentum=hp.memory_momentum).to(device)

    def setup(self, stage: str) -> None:
        if self.target_classifier is None and stage == "fit":
            self.build_target(len(self.trainer.datamodule.target_data.train))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if self.target_classifier is None and "target_classifier" in state:
            self.build_target(len(state["target_labels"]), len(state["target_classifier"]))

    def configure_callbacks(self) -> list[pl.Callback]:
        """A PseudoLabeling (and MeanTeacher) with the paper's settings unless configured."""
        present = {type(c) for c in self.trainer.callbacks} if self._trainer else set()
        extra: list[pl.Callback] = []
        if not any(issubclass(t, PseudoLabeling) for t in present):
            extra.append(PseudoLabeling())
        if self.hparams.mean_teacher and not any(issubclass(t, MeanTeacher) for t in present):
            extra.append(MeanTeacher(alpha=self.hparams.teacher_alpha))
        return extra

    # -- features --------------------------------------------------------------------------
    @property
    def test_encoder(self) -> Encoder:
        """The teacher (Mean-Net) when there is one, else the student."""
        return self.teacher if self.teacher is not None else self.student

    def clustering_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled feature f' of the teacher (or student) under the target's BN statistics,
        used for clustering."""
        with bn_domain(self, TARGET):
            return self.test_encoder(images)[1]

    def neck_features(self, feats: torch.Tensor, domain: int) -> torch.Tensor:
        """BNNeck feature of pooled features with the neck's running statistics of
        ``domain`` (eval-mode BN, whatever the module's mode; no statistics update)."""
        bn = self.neck.bn
        was_training = bn.training
        bn.eval()
        try:
            with bn_domain(bn, domain):
                return bn(feats)
        finally:
            bn.train(was_training)

    def memory_features(self, images: torch.Tensor, domain: int) -> torch.Tensor:
        """L2-normalised BNNeck feature of the teacher's (or student's) pooled feature
        under ``domain``'s statistics: what the memory bank stores."""
        with bn_domain(self, domain):
            f = self.test_encoder(images)[1]
        return F.normalize(self.neck_features(f, domain), dim=1)

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.clustering_features(images)

    # -- pseudo-labels and memory -----------------------------------------------------------
    @torch.no_grad()
    def prepare_target_statistics(self, trainer: pl.Trainer) -> None:
        """Before the first clustering (called by :class:`~reidlab.callbacks.PseudoLabeling`):
        the target's BN statistics of the student and the BNNeck re-estimated on the target
        training images (test transform; AdaBN, Li et al. 2017), copied to the teacher.
        Every rank makes the same pass over all the images (one pass, exact and identical
        on every rank under DDP). Once per training (``target_statistics_ready``)."""
        hp = self.hparams
        if not (hp.domain_bn and hp.init_target_statistics) or bool(self.target_statistics_ready):
            return
        dm = trainer.datamodule
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        loader = data_loader(ReIDImageDataset(dm.target_data.train, dm.test_transform),
                             batch_size=dm.hparams.eval_batch_size,
                             num_workers=dm.hparams.num_workers, rank=trainer.global_rank)
        batches = (b[0].to(self.device) for b in tqdm(loader, desc="target BN statistics",
                                                        disable=not show, leave=False))
        reestimate_bn_statistics(nn.ModuleList([self.student, self.neck]), batches,
                                 lambda x: self.neck.bn(self.student(x)[1]), domain=TARGET)
        if self.teacher is not None:
            for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
                t.copy_(s)
        self.target_statistics_ready.fill_(True)

    @torch.no_grad()
    def on_pseudo_labels(self, labels: np.ndarray, centers: torch.Tensor,
                         features: torch.Tensor, epoch: int | None = None) -> None:
        """New clustering: re-initialise the target classifier from the normalised cluster
        centres of the BNNeck feature it is applied to (``features`` are the clustering
        features f', mapped by the neck under the target's statistics; ``centers`` of f' are
        not used) and drop its optimizer state; remember the labels for the memory loss
        (for whichever ``epoch`` they are: SBase re-clusters every epoch)."""
        if self.target_classifier is None:
            self.build_target(len(labels))
        if self._trainer is not None and self.trainer.world_size > 1:
            # the running statistics drift per rank after DDP's start-of-forward broadcast:
            # use rank 0's, so every rank builds the same classifier
            for buffer in (self.neck.bn.running_mean, self.neck.bn.running_var):
                torch.distributed.broadcast(buffer, src=0)
        bn_feats = self.neck_features(features.to(self.neck.bn.weight), TARGET)
        centers = cluster_centers(bn_feats, labels)
        k = len(centers)
        if k > len(self.target_classifier):
            raise ValueError(f"{k} clusters exceed the target classifier capacity "
                             f"{len(self.target_classifier)} (raise max_target_clusters)")
        weight = self.target_classifier
        weight.zero_()
        weight[:k] = F.normalize(centers.to(weight), dim=1)
        self.num_target_clusters.fill_(k)
        self.target_labels.copy_(torch.as_tensor(labels, device=self.target_labels.device))
        self.reset_pseudo_label_optimizer_state()
        if self.memory is not None and not bool(self.memory.initialized):
            self._target_init = F.normalize(bn_feats, dim=1)

    def reset_pseudo_label_optimizer_state(self) -> None:
        """Fresh Adam moments for the re-initialised target classifier (also called by
        :class:`~reidlab.callbacks.PseudoLabeling` once a resumed run's optimizer state is
        restored, which would bring back the moments of the old classifier)."""
        if self._trainer is not None and self.target_classifier is not None:
            for opt in self.trainer.optimizers:
                opt.state.pop(self.target_classifier, None)

    def on_fit_start(self) -> None:
        if self.memory is None or bool(self.memory.initialized):
            return
        if self._target_init is None:
            raise RuntimeError("the memory bank needs the target features of a first "
                               "clustering: train with the PseudoLabeling callback")
        dm = self.trainer.datamodule
        source = dm.source_data.train
        feats = collect_features(self.trainer, self, source,
                                 lambda images: self.memory_features(images, SOURCE),
                                 desc="source features")
        pids = torch.as_tensor([r.pid for r in source])
        self.memory.init_source(feats.to(self.device), pids.to(self.device))
        self.memory.init_target(self._target_init.to(self.device))
        self._target_init = None

    # -- training ----------------------------------------------------------------------------
    def forward_domain(self, images: torch.Tensor, domain: int) -> dict[str, torch.Tensor]:
        """Student outputs of one domain's images (that domain's BN statistics): feature
        map, f and BNNeck feature."""
        with bn_domain(self, domain):
            fmap, f = self.student(images, self.hparams.bn_chunk)
            return {"fmap": fmap, "f": f, "bn": self.neck.bn(f)}

    def neck_batch_norm(self, feats: torch.Tensor, domain: int,
                        statistics_of: torch.Tensor | None = None) -> torch.Tensor:
        """The neck's BN with ``domain``'s affine parameters applied to features that are
        not a real batch of the domain (DCDFA's bases and recompositions): normalised with
        the batch statistics of ``statistics_of`` (default: ``feats`` itself; used as
        constants), without touching any running statistics; computed in float32."""
        bn = self.neck.bn
        weight, bias = bn.weight, bn.bias
        if isinstance(bn, DomainBatchNorm) and bn.per_domain_affine:
            weight, bias = weight[domain], bias[domain]
        ref = (feats if statistics_of is None else statistics_of).detach().float()
        mean, var = ref.mean(0), ref.var(0, unbiased=False)
        # in float32: under bf16 / fp16 autocast the features are half precision, which
        # the CPU's batch_norm refuses next to float32 parameters
        out = F.batch_norm(feats.float(), mean, var, weight.float(), bias.float(), False, 0.0,
                           bn.eps)
        return out.to(feats.dtype)

    def target_logits(self, bn: torch.Tensor) -> torch.Tensor:
        return bn @ self.target_classifier[: int(self.num_target_clusters)].T

    def reid_loss(self, feats: torch.Tensor, bn: torch.Tensor, pids: torch.Tensor,
                  logits_fn) -> torch.Tensor:
        """L_BReID = CE(logits(bn), y) + triplet(f, y)."""
        hp = self.hparams
        ce = F.cross_entropy(logits_fn(bn), pids, label_smoothing=hp.label_smoothing)
        return ce + batch_hard_triplet_loss(feats, pids, hp.triplet_margin)

    def target_reid_loss(self, feats: torch.Tensor, bn: torch.Tensor,
                         pids: torch.Tensor) -> torch.Tensor:
        """L_BReID on the target samples with a pseudo-label; 0 (keeping every parameter in
        the graph, as DDP requires) when there is none."""
        valid = pids >= 0
        if valid.any() and int(self.num_target_clusters) > 0:
            return self.reid_loss(feats[valid], bn[valid], pids[valid], self.target_logits)
        return zero_loss(self.target_classifier, feats)

    def training_losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict]:
        """Losses of one batch, and the forward outputs (for subclasses)."""
        hp = self.hparams
        s_img, s_pid = batch["source"][0], batch["source"][1]
        t_img, t_pid, _, t_idx = batch["target"][:4]
        src, tgt = self.forward_domain(s_img, SOURCE), self.forward_domain(t_img, TARGET)
        losses = {
            "source": self.reid_loss(src["f"], src["bn"], s_pid,
                                     lambda bn: self.neck.classifier(bn)),
            "target": hp.target_weight * self.target_reid_loss(tgt["f"], tgt["bn"], t_pid),
        }
        if self.memory is not None:  # on the BNNeck feature (normalised in the loss)
            feats = torch.cat([src["bn"], tgt["bn"]])
            labels = torch.cat([s_pid, t_pid])
            is_source = torch.arange(len(labels), device=labels.device) < len(s_pid)
            losses["memory"] = hp.memory_weight * memory_contrastive_loss(
                feats, labels, is_source, self.memory, self.target_labels,
                margin=hp.memory_margin, gamma=hp.memory_gamma)
            keep = t_pid >= 0
            self.memory.update(src["bn"].detach(), s_pid, tgt["bn"].detach()[keep],
                               t_idx[keep])
        return losses, {"source": src, "target": tgt, "s_pid": s_pid, "t_pid": t_pid}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, _ = self.training_losses(batch)
        loss = sum(losses.values())
        size = len(batch["source"][1]) + len(batch["target"][1])
        # every loss term on the progress bar: what a user watches on a long step
        self.log_dict({f"train/{k}": v for k, v in losses.items()} | {"train/loss": loss},
                      prog_bar=True, batch_size=size)
        self.log("train/target_clusters", self.num_target_clusters.float(), batch_size=size)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for n, p in self.named_parameters()
                  if p.requires_grad and not n.startswith("teacher.")]
        optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.milestones),
                                                         hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}

