"""DCDFA disentanglement modules (Zhang et al., CVPR 2021, Sec. 3.1 and 3.3): the channel
attention that splits ``f`` into ``b = m(F) * f`` and ``e = (1 - m(F)) * f`` (eq. 2), and the
domain classifier of the domain classification constraint (eq. 7)."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """CBAM channel attention, DCDFA eq. 3.

    ``m(F) = sigmoid(W1(ReLU(W0(avgpool F))) + W1(ReLU(W0(maxpool F))))`` with ``W0: C -> C/r``
    and ``W1: C/r -> C`` shared by both pooled vectors. The layers have no bias, exactly as
    written in eq. 3 (a bias of W1 would enter twice and only shift the sigmoid).

    Args:
        channels: C, channels of the feature map.
        reduction: r, the hidden width is ``max(1, C // r)``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.w0 = nn.Linear(channels, hidden, bias=False)
        self.w1 = nn.Linear(hidden, channels, bias=False)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` map -> ``(B, C)`` attention in (0, 1)."""
        avg, mx = feature_map.mean(dim=(2, 3)), feature_map.amax(dim=(2, 3))
        return torch.sigmoid(self.w1(torch.relu(self.w0(avg))) + self.w1(torch.relu(self.w0(mx))))


class DomainClassifier(nn.Module):
    """Two ``Linear + ReLU + Dropout`` blocks dividing the width by ``reduction`` each
    (C -> C/r -> C/r^2, at least 1), then ``Linear(-> 2)`` (DCDFA Sec. 3.3).

    Returns logits; the softmax is in :func:`reidlab.losses.domain_classification_loss`.
    Class 1 is "source", class 0 "target" (eq. 7).
    """

    def __init__(self, channels: int, reduction: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for _ in range(2):
            hidden = max(1, width // reduction)
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` features -> ``(B, 2)`` logits (index 1 = source)."""
        return self.net(features)
