"""IICS: intra-inter camera similarity for fully unsupervised re-ID (Xuan & Zhang,
"Intra-Inter Camera Similarity for Unsupervised Person Re-Identification", CVPR 2021).

Training alternates two stages in rounds (paper Sec. 3, Fig. 2); the
:class:`~reidlab.callbacks.IICSStages` callback re-clusters at the start of every stage:

* **intra-camera stage** (Sec. 3.2): every camera's images are clustered on their own
  (average-linkage agglomerative clustering, cosine or re-ranking distance of the CNN
  feature f); one classifier per camera; each step takes the same number of images from
  every camera and forwards each camera's chunk separately (per-camera BN statistics);
  L_intra = sum over cameras of the camera's CE (eq. 4, 7, 8);
* **inter-camera stage** (Sec. 3.3): every sample is classified by every camera classifier,
  the per-camera softmax scores are concatenated (eq. 10) and compared with the Jaccard
  similarity Delta (eq. 9); all samples are clustered on ``(1 - cos) - mu_t * Delta *
  [different cameras]`` (eq. 5 as a distance, mu_t = mu (1 - t/T)^0.6 over the rounds) and
  trained with CE + triplet on PK batches (eq. 11).

The backbone's layer3 and layer4 BatchNorms are AIBN layers (Sec. 3.4, eq. 12).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from reidlab.callbacks.iics_stages import IICSStages
from reidlab.clustering import agglomerative, condensed_distances, jaccard_distance, score_jaccard
from reidlab.losses import batch_hard_triplet_loss, zero_loss
from reidlab.modules.base import ReIDModule, load_baseline_parts
from reidlab.nn import BNNeck, build_backbone, build_pooling
from reidlab.nn.aibn import aibn_alphas, convert_to_aibn

STAGES = ("intra", "inter")
FEATURE_DISTANCES = ("cosine", "rerank")
INTER_SIMILARITIES = ("eq5", "eq9", "cnn")


def _dense_block(matrix, i0: int, i1: int, j0: int, missing: float = 1.0) -> torch.Tensor:
    """Rows ``i0:i1``, columns ``j0:`` of a sparse distance matrix, ``missing`` where no
    entry is stored."""
    block = matrix[i0:i1, j0:].tocoo()
    out = torch.full(block.shape, missing)
    out[torch.as_tensor(block.row, dtype=torch.long),
        torch.as_tensor(block.col, dtype=torch.long)] = torch.as_tensor(block.data,
                                                                         dtype=torch.float32)
    return out


class IICS(ReIDModule):
    """IICS (paper Sec. 3) on a target-only :class:`~reidlab.datamodules.CrossDomainDataModule`
    (``source: null``): images and camera ids, never identities.

    The stage of an epoch follows from the epoch number: round ``t = epoch // (intra_epochs
    + inter_epochs)``, first ``intra_epochs`` intra-camera epochs, then ``inter_epochs``
    inter-camera epochs (``max_epochs = rounds * (intra_epochs + inter_epochs)``; paper: 40
    rounds of 2 + 2, MSMT17 12 + 2). ``inter_epochs=0`` gives "stage 1 only",
    ``intra_epochs=0`` "stage 2 only" (paper Table 1; camera classifiers are then never
    trained, so it needs ``inter_similarity="cnn"``). The
    :class:`~reidlab.callbacks.IICSStages` callback (added when missing) clusters at each
    stage start and hands the labels to :meth:`start_stage`, which re-initialises that
    stage's classifiers; :meth:`reset_optimizer` re-creates the optimizer (state cleared,
    the stage's learning rates: SGD, momentum 0.9, wd 5e-4, heads ``head_lr_factor`` x the
    backbone's).

    Heads: a BNNeck BatchNorm1d (frozen zero bias) shared by one bias-free classifier per
    camera (intra) and one for the inter-camera clusters. Capacities are fixed at setup
    (``min(intra_clusters, camera images)`` per camera; ``inter_clusters``), so DDP and
    checkpoints always see the same parameters. Test feature: the pooled feature f.

    Batch-norm batches: in the intra stage each camera's chunk of a batch (8 images), in the
    inter stage the whole per-device batch (the paper trains on one GPU: 64 images; under
    DDP every device draws its own 16 x 4 batch).

    Args:
        num_classes: ignored (no source; accepted because the CLI links it).
        pretrained: start the backbone from a :class:`~reidlab.modules.Baseline` checkpoint
            instead of ``weights`` (before the AIBN conversion, so its BN statistics carry
            over); the synthetic benchmark's stand-in for ImageNet pretraining.
        backbone, weights, last_stride, backbone_width, pooling: as in the Baseline.
        aibn: replace the BatchNorms of ``aibn_layers`` by AIBN (paper: layer3 + layer4).
        aibn_layers: backbone stages to convert.
        alpha_init: initial AIBN mixture weight (paper 0.5).
        learn_alpha: train alpha (False: "AIBN (fixed)"; with alpha_init 0: "+ IN").
        alpha_sharing: ``block`` (one alpha per bottleneck, paper), ``layer`` or ``none``.
        unbiased_instance_var: unbiased instance variance in AIBN (authors' code).
        rounds: number T of rounds, the horizon of the mu_t schedule (the paper's 40);
            the trainer's ``max_epochs`` must equal ``rounds * (intra_epochs +
            inter_epochs)`` (checked at fit start).
        intra_epochs: epochs of each intra-camera stage.
        inter_epochs: epochs of each inter-camera stage.
        intra_clusters: clusters per camera (600; fewer for a camera with fewer images).
        inter_clusters: inter-camera clusters (800; MSMT17 1200), or None with
            ``inter_threshold``.
        inter_threshold: average-linkage distance threshold instead of a fixed count.
        feature_distance: CNN-feature distance for clustering: ``cosine`` (paper's †
            results) or ``rerank`` (k-reciprocal re-ranking, ``(1 - lambda) d_J + lambda
            d_cos``, the ‡ results).
        k1, k2, rerank_lambda: re-ranking parameters (Zhong et al. 2017: 20, 6, 0.3).
        inter_similarity: ``eq5`` (cosine distance - mu_t Delta across cameras), ``eq9``
            (1 - Delta alone) or ``cnn`` (the CNN distance alone, "Stage 2*").
        mu: mu_0 of eq. 5 (0.02).
        mu_power: poly decay power of mu_t (0.6).
        triplet_margin: margin of the inter-stage triplet loss (0.3; None: soft margin).
        triplet_weight: lambda of eq. 11 (1).
        intra_lr: backbone learning rate of the intra stage (5e-4).
        inter_lr: backbone learning rate of the inter stage (1e-3).
        head_lr_factor: heads' learning rate / backbone's (10).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        chunk_size: rows per block when building the inter-camera distances.
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
        aibn: bool = True,
        aibn_layers: Sequence[str] = ("layer3", "layer4"),
        alpha_init: float = 0.5,
        learn_alpha: bool = True,
        alpha_sharing: str = "block",
        unbiased_instance_var: bool = False,
        rounds: int = 40,
        intra_epochs: int = 2,
        inter_epochs: int = 2,
        intra_clusters: int = 600,
        inter_clusters: int | None = 800,
        inter_threshold: float | None = None,
        feature_distance: str = "cosine",
        k1: int = 20,
        k2: int = 6,
        rerank_lambda: float = 0.3,
        inter_similarity: str = "eq5",
        mu: float = 0.02,
        mu_power: float = 0.6,
        triplet_margin: float | None = 0.3,
        triplet_weight: float = 1.0,
        intra_lr: float = 5e-4,
        inter_lr: float = 1e-3,
        head_lr_factor: float = 10.0,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if intra_epochs < 0 or inter_epochs < 0 or intra_epochs + inter_epochs < 1:
            raise ValueError(f"need intra_epochs, inter_epochs >= 0 and at least one epoch per "
                             f"round, got {intra_epochs} + {inter_epochs}")
        if intra_epochs == 0 and inter_similarity != "cnn":
            raise ValueError(f"intra_epochs=0 (stage 2 only) never trains the camera "
                             f"classifiers that inter_similarity={inter_similarity!r} (eq. 5 / "
                             f"eq. 9) reads: use inter_similarity='cnn'")
        if (inter_clusters is None) == (inter_threshold is None):
            raise ValueError("give exactly one of inter_clusters and inter_threshold")
        if intra_clusters < 1:
            raise ValueError(f"intra_clusters must be >= 1, got {intra_clusters}")
        if feature_distance not in FEATURE_DISTANCES:
            raise ValueError(f"feature_distance must be one of {FEATURE_DISTANCES}, "
                             f"got {feature_distance!r}")
        if inter_similarity not in INTER_SIMILARITIES:
            raise ValueError(f"inter_similarity must be one of {INTER_SIMILARITIES}, "
                             f"got {inter_similarity!r}")
        self.save_hyperparameters()
        self.backbone = build_backbone(backbone, None if pretrained else weights, last_stride,
                                       backbone_width)
        if pretrained:
            load_baseline_parts(pretrained, {"backbone.": self.backbone})
        if aibn:
            convert_to_aibn(self.backbone, aibn_layers, alpha_init, alpha_sharing, learn_alpha,
                            unbiased_instance_var)
        self.pool = build_pooling(pooling)
        self.neck = BNNeck(self.backbone.out_channels)  # BatchNorm1d only
        # built in setup() once the cameras are known (or from a checkpoint)
        self.camera_classifiers: nn.ModuleList | None = None
        self.inter_classifier: nn.Linear | None = None

    # -- construction --------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.neck.bn.num_features

    def build_heads(self, cameras: Sequence[int], camera_capacity: Sequence[int],
                    inter_capacity: int) -> None:
        """One classifier per camera (``camera_capacity`` rows each) and the inter one."""
        device = self.neck.bn.weight.device
        dim = self.feature_dim
        self.camera_classifiers = nn.ModuleList(
            nn.Linear(dim, int(k), bias=False) for k in camera_capacity).to(device)
        self.inter_classifier = nn.Linear(dim, int(inter_capacity), bias=False).to(device)
        capacity = torch.as_tensor([int(k) for k in camera_capacity], device=device)
        self.register_buffer("cameras", torch.as_tensor([int(c) for c in cameras],
                                                        device=device))
        self.register_buffer("camera_offsets", torch.cumsum(capacity, 0) - capacity)
        self.register_buffer("num_inter_clusters", torch.zeros((), dtype=torch.long,
                                                               device=device))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if stage == "fit" and getattr(dm, "target_data", None) is None:
            raise TypeError(f"IICS trains on CrossDomainDataModule(source=None, target=...), "
                            f"got {type(dm).__name__}")
        if stage == "fit" and getattr(dm, "source_data", None) is not None:
            raise ValueError("IICS is fully unsupervised: give the DataModule source=None (a "
                             "source would be loaded and never used)")
        hp = self.hparams
        per_round = hp.intra_epochs + hp.inter_epochs
        if stage == "fit" and self.trainer.max_epochs != hp.rounds * per_round:
            raise ValueError(
                f"IICS: trainer max_epochs={self.trainer.max_epochs} but rounds={hp.rounds} x "
                f"(intra_epochs + inter_epochs)={per_round} = {hp.rounds * per_round}: mu_t "
                f"decays over the rounds (eq. 5), so the two must match; set max_epochs to "
                f"{hp.rounds * per_round} or rounds to max_epochs / {per_round}")
        if self.camera_classifiers is None and stage == "fit":
            records = dm.target_data.train
            camids = np.array([r.camid for r in records])
            cameras, sizes = np.unique(camids, return_counts=True)
            inter = len(records) if hp.inter_clusters is None else min(hp.inter_clusters,
                                                                         len(records))
            self.build_heads(cameras, np.minimum(sizes, hp.intra_clusters), inter)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if self.camera_classifiers is None and "cameras" in state:
            count = len(state["cameras"])
            self.build_heads(state["cameras"].tolist(),
                             [len(state[f"camera_classifiers.{c}.weight"]) for c in range(count)],
                             len(state["inter_classifier.weight"]))

    def configure_callbacks(self) -> list[pl.Callback]:
        """An :class:`~reidlab.callbacks.IICSStages` unless one is configured."""
        present = self.trainer.callbacks if self._trainer else []
        return [] if any(isinstance(c, IICSStages) for c in present) else [IICSStages()]

    # -- schedule --------------------------------------------------------------------------
    def stage_at(self, epoch: int) -> tuple[str, int, int]:
        """``(stage, round, first epoch of that stage)`` of ``epoch``."""
        hp = self.hparams
        rnd, k = divmod(int(epoch), hp.intra_epochs + hp.inter_epochs)
        start = rnd * (hp.intra_epochs + hp.inter_epochs)
        if k < hp.intra_epochs:
            return "intra", rnd, start
        return "inter", rnd, start + hp.intra_epochs

    def mu_at(self, rnd: int) -> float:
        """mu_t = mu (1 - t / T)^power (paper Sec. 4.2, poly decay over the rounds)."""
        hp = self.hparams
        return hp.mu * max(0.0, 1.0 - rnd / hp.rounds) ** hp.mu_power

    # -- features and distances ------------------------------------------------------------
    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(images))

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pooled(images)

    def clustering_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pooled(images)

    def feature_distance_rows(self, features: torch.Tensor):
        """``rows(i0, i1, j0=0)`` -> CNN-feature distances ``(i1 - i0, N - j0)`` of
        ``features[i0:i1]`` to ``features[j0:]``:
        cosine, or the re-ranking distance ``(1 - lambda) d_J + lambda d_cos`` (Zhong et al.
        2017, eq. 14, with the cosine distance as the original distance)."""
        hp = self.hparams
        f = F.normalize(features.float(), dim=1)
        jaccard = (jaccard_distance(f, hp.k1, hp.k2) if hp.feature_distance == "rerank"
                   else None)
        f = f.to(self.device)

        def rows(i0: int, i1: int, j0: int = 0) -> torch.Tensor:
            cos = 1 - f[i0:i1] @ f[j0:].T
            if jaccard is None:
                return cos
            return ((1 - hp.rerank_lambda) * _dense_block(jaccard, i0, i1, j0).to(cos)
                    + hp.rerank_lambda * cos)
        return rows

    @torch.no_grad()
    def camera_scores(self, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """``s = [s^1, ..., s^C]`` (eq. 10): softmax of every camera classifier (its active
        clusters) on the BNNeck feature in eval mode; ``(N, sum of clusters)`` on the CPU."""
        bn = self.neck.bn
        out = []
        for chunk in features.split(batch_size):
            x = F.batch_norm(chunk.to(bn.weight), bn.running_mean, bn.running_var, bn.weight,
                             bn.bias, training=False, eps=bn.eps)
            out.append(torch.cat([F.softmax(clf(x), dim=1) for clf in self.camera_classifiers],
                                 dim=1).float().cpu())
        return torch.cat(out)

    # -- clustering (rank 0; called by IICSStages) ------------------------------------------
    def intra_camera_labels(self, features: torch.Tensor, camids: np.ndarray) -> np.ndarray:
        """Per-camera agglomerative clustering (average linkage, ``min(intra_clusters,
        camera images)`` clusters each; the count is computed per camera, never carried
        over). Labels are global: camera c's clusters are ``offset_c .. offset_c + k_c - 1``.
        """
        labels = np.full(len(camids), -1, dtype=np.int64)
        offsets = self.camera_offsets.tolist()
        for c, cam in enumerate(self.cameras.tolist()):
            idx = np.flatnonzero(camids == cam)
            k = self.camera_classifiers[c].out_features
            if len(idx) == 0:
                continue
            rows = self.feature_distance_rows(features[idx])
            dist = condensed_distances(len(idx), rows, self.hparams.chunk_size)
            labels[idx] = offsets[c] + agglomerative(dist, n_clusters=min(k, len(idx)))
        return labels

    def inter_camera_labels(self, features: torch.Tensor, camids: np.ndarray, rnd: int,
                            progress: bool = False) -> np.ndarray:
        """Clustering of all samples on the inter-camera distance of ``inter_similarity``:
        eq. 5 ``(d_feat - mu_t Delta [cam_m != cam_n])``, eq. 9 ``(1 - Delta)`` or the CNN
        distance alone; built block by block on the module's device (memory: the condensed
        N(N-1)/2 float64 vector on the CPU, ``chunk_size x N`` per block; each pair is
        computed once; the score Jaccard's L1 distances are ``torch.cdist`` on a GPU and a
        compiled kernel on the CPU, ~20 s at Market size on 2 cores)."""
        hp = self.hparams
        sim = hp.inter_similarity
        feat_rows = self.feature_distance_rows(features) if sim != "eq9" else None
        scores = self.camera_scores(features).to(self.device) if sim != "cnn" else None
        cams = torch.as_tensor(camids, device=self.device)
        mu_t = self.mu_at(rnd)

        def rows(i0: int, i1: int, j0: int) -> torch.Tensor:
            if sim == "cnn":
                return feat_rows(i0, i1, j0)
            delta = score_jaccard(scores[i0:i1], scores[j0:])
            if sim == "eq9":
                return 1 - delta
            cross = cams[i0:i1, None] != cams[None, j0:]
            return feat_rows(i0, i1, j0) - mu_t * delta * cross

        dist = condensed_distances(len(camids), rows, hp.chunk_size, progress=progress,
                                   desc="inter-camera distances")
        if hp.inter_clusters is not None:
            return agglomerative(dist, n_clusters=min(int(self.inter_classifier.out_features),
                                                      len(camids)))
        labels = agglomerative(dist, distance_threshold=hp.inter_threshold)
        if labels.max(initial=-1) >= self.inter_classifier.out_features:
            raise ValueError("more inter-camera clusters than the classifier's capacity")
        return labels

    # -- stage start (all ranks) -------------------------------------------------------------
    @torch.no_grad()
    def start_stage(self, stage: str, epoch: int, labels: np.ndarray) -> None:
        """New labels for the stage starting at ``epoch``: fresh classifiers for it,
        N(0, 0.001) seeded by the epoch, so every rank and a resumed run get the same ones."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        gen = torch.Generator().manual_seed(10_007 + int(epoch))
        heads = list(self.camera_classifiers) if stage == "intra" else [self.inter_classifier]
        for head in heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.001)
        if stage == "inter":
            self.num_inter_clusters.fill_(int(labels.max(initial=-1)) + 1)

    def reset_optimizer(self, stage: str) -> None:
        """Re-create the optimizer for ``stage`` (paper: new SGD every stage): its state is
        cleared and the stage's learning rates set."""
        for opt in self.trainer.optimizers:
            opt.state.clear()
            self._set_stage_lrs(opt, stage)

    def reset_pseudo_label_optimizer_state(self) -> None:
        """:meth:`reset_optimizer` for the current epoch's stage (called by
        :class:`~reidlab.callbacks.IICSStages` once a resumed run's optimizer is restored)."""
        self.reset_optimizer(self.stage_at(self.current_epoch)[0])

    def _set_stage_lrs(self, optimizer: torch.optim.Optimizer, stage: str) -> None:
        hp = self.hparams
        lr = hp.intra_lr if stage == "intra" else hp.inter_lr
        optimizer.param_groups[0]["lr"] = lr
        optimizer.param_groups[1]["lr"] = lr * hp.head_lr_factor

    # -- training ----------------------------------------------------------------------------
    def intra_loss(self, images: torch.Tensor, labels: torch.Tensor,
                   camids: torch.Tensor) -> torch.Tensor:
        """L_intra = sum_c CE(W_c bn(f), m) over camera chunks, each its own BN batch (eq. 8)."""
        cams = self.cameras
        if len(images) % len(cams) or not bool(
                (camids.view(len(cams), -1) == cams[:, None]).all()):
            raise ValueError("the IICS intra-camera stage needs batches of the same number of "
                             "images from every camera, in camera order (the per_camera "
                             "target sampler)")
        loss = images.new_zeros(())
        chunks = zip(images.chunk(len(cams)), labels.chunk(len(cams)), strict=True)
        for c, (chunk, y) in enumerate(chunks):
            local = y - self.camera_offsets[c]
            bn = self.neck.bn(self.pooled(chunk))
            logits = self.camera_classifiers[c](bn)
            loss = loss + F.cross_entropy(logits, local)
        return loss

    def inter_loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_inter = CE(W bn(f), m) + lambda * triplet(f, m) (eq. 11)."""
        hp = self.hparams
        f = self.pooled(images)
        logits = self.inter_classifier(self.neck.bn(f))[:, : int(self.num_inter_clusters)]
        return {"ce": F.cross_entropy(logits, labels),
                "triplet": hp.triplet_weight * batch_hard_triplet_loss(f, labels,
                                                                       hp.triplet_margin)}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels, camids = batch["target"][:3]
        stage, rnd, _ = self.stage_at(self.current_epoch)
        if stage == "intra":
            losses = {"intra": self.intra_loss(images, labels, camids)}
        else:
            losses = self.inter_loss(images, labels)
        loss = sum(losses.values())
        # the other stage's heads get zero gradients: DDP needs every parameter in the graph
        idle = self.inter_classifier if stage == "intra" else self.camera_classifiers
        loss = loss + zero_loss(idle)
        self.log_dict({f"train/{k}": v for k, v in losses.items()} | {"train/loss": loss},
                      batch_size=len(images))
        self.log("train/round", float(rnd), batch_size=len(images))
        alphas = aibn_alphas(self.backbone)
        if len(alphas):
            self.log("train/aibn_alpha", alphas.mean(), batch_size=len(images))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD with the backbone (AIBN alphas included) and the heads in two groups; the
        stage's learning rates are set at every stage start (:meth:`reset_optimizer`)."""
        hp = self.hparams
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        heads = [p for n, p in self.named_parameters()
                 if p.requires_grad and not n.startswith("backbone.")]
        optimizer = torch.optim.SGD([{"params": backbone}, {"params": heads}], lr=hp.intra_lr,
                                    momentum=hp.momentum, weight_decay=hp.weight_decay)
        self._set_stage_lrs(optimizer, self.stage_at(self.current_epoch)[0]
                            if self._trainer is not None else "intra")
        return optimizer
