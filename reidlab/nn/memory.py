"""Hybrid memory bank of the SBase strong baseline (Zhang et al., "Unsupervised Domain
Adaptive Person Re-identification via Disentanglement-based Cross-Domain Feature
Augmentation", CVPR 2021, Sec. 4.1): source class prototypes and target instance features."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks (rank order) of a tensor whose first dim may differ per rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(gather_all_tensors(tensor))


class MemoryBank(nn.Module):
    """L2-normalised source class prototypes ``(C, D)`` and target instance features ``(N, D)``.

    Both are persistent buffers (saved in checkpoints), as is ``initialized``: True once
    every prototype and every target entry holds a (non-zero) feature. Each input feature is
    L2-normalised before it is averaged, at initialisation as in the momentum updates, so a
    memory row is always a mean of unit vectors re-normalised.

    Momentum update of a row ``m`` with the mean ``x`` of the batch features assigned to it
    (the SpCL-style memory the paper builds on): ``m <- normalize(mu * m + (1 - mu) * x)``.
    Under DDP the batch is first gathered from every rank, so all ranks hold the same memory;
    every rank must then call :meth:`update` with the same pairs left as None.

    Args:
        dim: feature dimension D.
        num_source_classes: number C of source identities (0 for no source part).
        num_target: number N of target images.
        momentum: mu, the weight kept by the old memory row.
    """

    source: torch.Tensor
    target: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, dim: int, num_source_classes: int, num_target: int,
                 momentum: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("source", torch.zeros(num_source_classes, dim))
        self.register_buffer("target", torch.zeros(num_target, dim))
        self.register_buffer("initialized", torch.tensor(False))

    def _check_features(self, features: torch.Tensor, rows: int | None, name: str) -> None:
        dim = self.target.shape[1]
        if features.ndim != 2 or features.shape[1] != dim or (rows is not None
                                                              and features.shape[0] != rows):
            want = f"({rows if rows is not None else 'B'}, {dim})"
            raise ValueError(f"{name} must have shape {want}, got {tuple(features.shape)}")

    def _refresh_initialized(self) -> None:
        filled = self.source.any(1).all() & self.target.any(1).all()
        self.initialized.copy_(filled)

    @staticmethod
    def _class_means(features: torch.Tensor, labels: torch.Tensor,
                     num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the normalised features per row id, and the count per row id."""
        feats = F.normalize(features, dim=1)
        sums = feats.new_zeros(num_rows, feats.shape[1]).index_add_(0, labels, feats)
        return sums, torch.bincount(labels, minlength=num_rows)

    @torch.no_grad()
    def init_source(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Prototype ``c`` = normalised mean of the (normalised) features of class ``c``.

        Raises:
            ValueError: on a bad shape, or when a class has no sample (the classes are named).
        """
        num_classes = self.source.shape[0]
        self._check_features(features, None, "source features")
        labels = labels.to(self.source.device, torch.long)
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must have shape ({features.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"source labels must lie in [0, {num_classes})")
        sums, counts = self._class_means(features.to(self.source), labels, num_classes)
        missing = (counts == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"source classes without any sample: {missing}")
        self.source.copy_(F.normalize(sums, dim=1))
        self._refresh_initialized()

    @torch.no_grad()
    def init_target(self, features: torch.Tensor) -> None:
        """Target entry ``i`` = normalised feature of target image ``i``; shape ``(N, D)``."""
        self._check_features(features, self.target.shape[0], "target features")
        self.target.copy_(F.normalize(features.to(self.target), dim=1))
        self._refresh_initialized()

    @staticmethod
    def _momentum_update(memory: torch.Tensor, features: torch.Tensor, rows: torch.Tensor,
                         momentum: float) -> None:
        """``m_r <- normalize(mu * m_r + (1 - mu) * mean of the features with row r)``."""
        unique, inverse = rows.unique(return_inverse=True)
        sums, counts = MemoryBank._class_means(features, inverse, len(unique))
        means = sums / counts[:, None]
        memory[unique] = F.normalize(momentum * memory[unique] + (1 - momentum) * means, dim=1)

    @torch.no_grad()
    def update(self, source_features: torch.Tensor | None, source_labels: torch.Tensor | None,
               target_features: torch.Tensor | None,
               target_indices: torch.Tensor | None) -> None:
        """Momentum update from a batch (gathered over ranks); either pair may be None.

        Args:
            source_features: ``(B_s, D)`` source features.
            source_labels: ``(B_s,)`` their class ids.
            target_features: ``(B_t, D)`` target features.
            target_indices: ``(B_t,)`` their indices in the target set; a repeated index
                uses the mean of its features.
        """
        if not bool(self.initialized):
            raise RuntimeError("MemoryBank.update called before init_source/init_target")
        pairs = ((self.source, source_features, source_labels, "source"),
                 (self.target, target_features, target_indices, "target"))
        for memory, features, rows, name in pairs:
            if (features is None) != (rows is None):
                raise ValueError(f"{name} features and their labels/indices go together")
            if features is None:
                continue
            self._check_features(features, None, f"{name} features")
            if rows.shape != features.shape[:1]:
                raise ValueError(f"{len(features)} {name} features but rows of shape "
                                 f"{tuple(rows.shape)}")
            features = _gather(features.detach().to(memory))
            rows = _gather(rows.detach().to(memory.device, torch.long))
            if len(rows):
                self._momentum_update(memory, features, rows, self.momentum)
