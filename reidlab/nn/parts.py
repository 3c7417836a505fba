"""MGN-style part branches (Wang et al., "Learning Discriminative Features with Multiple
Granularities for Person Re-Identification", ACM MM 2018), as IS-GAN uses them.

The backbone is split after the first block of its third stage: the shared ``trunk`` (stem,
stages 1-2 and the strided first block of stage 3) and the ``tail`` (the rest of stage 3 and
stage 4). Each branch is its own copy of the tail. A branch with one stripe keeps stage 4's
stride 2 and gives one global feature; a branch with ``n > 1`` stripes runs stage 4 at stride
1 (twice the map height) and gives a global feature plus ``n`` horizontal stripes. For
stripes ``(1, 2, 3)`` that is the 8 features of MGN / IS-GAN: 3 global + 2 + 3 local.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reidlab.nn.backbones import Backbone, stage_out_channels

POOLINGS = ("max", "avg")


def set_stride(module: nn.Module, stride: int) -> None:
    """Set every strided convolution of ``module`` (a stage downsamples in its first block:
    the strided 3x3 / depthwise conv and the shortcut's 1x1) to ``stride``."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.stride = (stride, stride)


def split_backbone(backbone: Backbone) -> tuple[nn.Sequential, nn.Sequential]:
    """``(trunk, tail)`` of a backbone split after the first block of its third stage.

    The backbone must keep its last stride (2): the branches set their own.
    """
    if backbone.output_stride != 32:
        raise ValueError("split_backbone needs a backbone with last_stride=2 (output stride "
                         f"32), got output stride {backbone.output_stride}")
    first, second, third, fourth = backbone.stage_names
    stage3 = backbone.stage(third)
    trunk = nn.Sequential(backbone.stem, backbone.stage(first), backbone.stage(second),
                          stage3[:1])
    tail = nn.Sequential(stage3[1:], backbone.stage(fourth))
    return trunk, tail


class PartBranches(nn.Module):
    """Branches over the trunk's map, each pooled into a global feature and stripes.

    Args:
        tail: the backbone's tail (:func:`split_backbone`); each branch is a deep copy.
        stripes: horizontal stripes per branch (``(1, 2, 3)``: MGN's part-1/2/3 branches).
        pooling: ``max`` (IS-GAN's E_R) or ``avg`` (E_U).

    ``forward`` returns ``(N, P, C)``: the P features branch by branch, each branch's
    global feature first, then its stripes from top to bottom; :attr:`is_local` marks the
    stripes.
    """

    def __init__(self, tail: nn.Module, stripes: Sequence[int] = (1, 2, 3),
                 pooling: str = "max") -> None:
        super().__init__()
        if not stripes or min(stripes) < 1:
            raise ValueError(f"stripes must be positive stripe counts, got {list(stripes)}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.stripes = tuple(int(n) for n in stripes)
        self.pool = F.adaptive_max_pool2d if pooling == "max" else F.adaptive_avg_pool2d
        self.branches = nn.ModuleList()
        for n in self.stripes:
            branch = copy.deepcopy(tail)
            if n > 1:
                set_stride(branch[-1], 1)
            self.branches.append(branch)
        self.is_local = [local for n in self.stripes
                         for local in [False] + [True] * (n if n > 1 else 0)]
        self.out_channels = stage_out_channels(tail)

    @property
    def num_parts(self) -> int:
        return len(self.is_local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for n, branch in zip(self.stripes, self.branches, strict=True):
            fmap = branch(x)
            parts.append(self.pool(fmap, 1).flatten(2))  # (N, C, 1)
            if n > 1:
                if fmap.shape[2] < n:
                    raise ValueError(f"a {fmap.shape[2]}-row feature map cannot be cut into "
                                     f"{n} stripes: use taller images or fewer stripes")
                parts.append(self.pool(fmap, (n, 1)).flatten(2))  # (N, C, n)
        return torch.cat(parts, dim=2).transpose(1, 2)
