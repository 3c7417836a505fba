"""The supervised Baseline (BoT: Luo et al., "Bag of Tricks and a Strong Baseline for
Deep Person Re-identification", CVPR-W 2019).

ResNet (last stride 1) -> global pooling -> feature f (triplet loss) -> BNNeck ->
classifier without bias (cross-entropy with label smoothing). Trained on the source it
is the "direct transfer" reference of every cross-domain method; trained on the target,
the oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from reidlab.losses import batch_hard_triplet_loss
from reidlab.modules.base import ReIDModule
from reidlab.nn import BNNeck, build_backbone, build_pooling


class Baseline(ReIDModule):
    """BoT baseline: CE (label smoothing) on BNNeck logits + batch-hard triplet on f.

    Works with :class:`~reidlab.datamodules.ReIDDataModule` (tuple batches) and with the
    source side of :class:`~reidlab.datamodules.CrossDomainDataModule` (dict batches).

    Args:
        num_classes: training identities (linked from the datamodule by the CLI).
        backbone: ``resnet50`` (default), ``resnet18``, ``resnet34``, ``resnet101`` or
            ``mobilenet_v2`` (the CPU benchmark's, with ``weights: mobilenet_v2_imagenet``).
        weights: ``"imagenet"``, a torchvision weight name, a file path, a cached name
            (:data:`reidlab.nn.LOCAL_WEIGHTS`) or None.
        last_stride: stride of the last backbone stage (1 in BoT).
        backbone_width: channel multiplier of the backbone (< 1 for CPU runs, random init
            only). Not ``width``: that is the DataModule's image width, and Lightning merges
            both hparams when logging.
        pooling: ``avg``, ``max`` or ``gem``.
        test_feature: ``bn`` (after BNNeck, BoT's choice) or ``pooled``.
        label_smoothing: epsilon of the smoothed cross-entropy (0.1).
        triplet_margin: hinge margin, or None for the soft margin.
        ce_weight: weight of the cross-entropy term.
        triplet_weight: weight of the triplet term.
        lr: Adam learning rate (3.5e-4).
        weight_decay: Adam weight decay (5e-4).
        warmup_epochs: linear warm-up length in epochs (10).
        warmup_factor: learning-rate factor at the first epoch of warm-up (0.01).
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: step decay factor.
    """

    def __init__(
        self,
        num_classes: int = 0,
        backbone: str = "resnet50",
        weights: str | None = "imagenet",
        last_stride: int = 1,
        backbone_width: float = 1.0,
        pooling: str = "avg",
        test_feature: str = "bn",
        label_smoothing: float = 0.1,
        triplet_margin: float | None = 0.3,
        ce_weight: float = 1.0,
        triplet_weight: float = 1.0,
        lr: float = 3.5e-4,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 10,
        warmup_factor: float = 0.01,
        milestones: Sequence[int] = (40, 70),
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("Baseline needs num_classes >= 1 (the training identities)")
        if test_feature not in ("bn", "pooled"):
            raise ValueError(f"test_feature must be 'bn' or 'pooled', got {test_feature!r}")
        self.save_hyperparameters()
        self.backbone = build_backbone(backbone, weights, last_stride, backbone_width)
        self.pool = build_pooling(pooling)
        self.neck = BNNeck(self.backbone.out_channels, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.backbone.out_channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"pooled": f, "bn": BNNeck(f), "logits": classifier(BNNeck(f))}``."""
        pooled = self.pool(self.backbone(images))
        bn, logits = self.neck(pooled)
        return {"pooled": pooled, "bn": bn, "logits": logits}

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[self.hparams.test_feature]

    def losses(self, out: dict[str, torch.Tensor], pids: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_BReID = CE(logits, y; eps) + triplet(f, y) (BoT eq. 1 and 3)."""
        hp = self.hparams
        ce = F.cross_entropy(out["logits"], pids, label_smoothing=hp.label_smoothing)
        tri = batch_hard_triplet_loss(out["pooled"], pids, hp.triplet_margin)
        return {"ce": ce, "triplet": tri, "loss": hp.ce_weight * ce + hp.triplet_weight * tri}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, dict):
            batch = batch["source"]
        images, pids = batch[0], batch[1]
        out = self(images)
        losses = self.losses(out, pids)
        acc = (out["logits"].argmax(1) == pids).float().mean()
        self.log_dict({f"train/{k}": v for k, v in losses.items()} | {"train/acc": acc},
                      prog_bar=True, batch_size=len(pids))
        return losses["loss"]

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}

    def lr_factor(self, epoch: int) -> float:
        """Linear warm-up from ``warmup_factor`` to 1, then step decay at ``milestones``."""
        hp = self.hparams
        if epoch < hp.warmup_epochs:
            alpha = epoch / hp.warmup_epochs
            return hp.warmup_factor * (1 - alpha) + alpha
        return hp.gamma ** sum(epoch >= m for m in hp.milestones)
