"""Pooling and the BNNeck head (Luo et al., "Bag of Tricks", CVPR-W 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling: ``(mean(x^p))^(1/p)`` over the spatial map, ``p`` trainable.

    p = 1 is average pooling, p -> inf approaches max pooling (Radenovic et al. 2018).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(min=self.eps).pow(self.p)
        return F.adaptive_avg_pool2d(x, 1).pow(1.0 / self.p).flatten(1)


def build_pooling(kind: str) -> nn.Module:
    """``avg``, ``max`` or ``gem`` global pooling to an ``(N, C)`` tensor."""
    if kind == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if kind == "max":
        return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
    if kind == "gem":
        return GeneralizedMeanPooling()
    raise ValueError(f"pooling must be 'avg', 'max' or 'gem', got {kind!r}")


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free linear classifier.

    The triplet loss sees the pooled feature, the cross-entropy the logits of the
    normalised feature (BoT, Sec. 3.5). ``num_classes=0`` gives no classifier.
    """

    def __init__(self, in_features: int, num_classes: int = 0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.bn.bias.requires_grad_(False)
        nn.init.constant_(self.bn.weight, 1.0)
        nn.init.constant_(self.bn.bias, 0.0)
        self.classifier = nn.Linear(in_features, num_classes, bias=False) if num_classes else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(bn_features, logits)``; logits is None without a classifier."""
        bn = self.bn(features)
        return bn, (self.classifier(bn) if self.classifier is not None else None)
