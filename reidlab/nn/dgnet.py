"""DG-Net / DG-Net++ generative blocks (Zheng et al., "Joint Discriminative and Generative
Learning for Person Re-identification", CVPR 2019; Zou et al., "Joint Disentangling and
Adaptation for Cross-Domain Person Re-Identification", ECCV 2020), from the specification in
METHODS.md: the structure encoder (channel-mean image -> 128-channel structure code), the
decoder (AdaIN residual blocks driven by MLPs on the appearance code, LayerNorm up-sampling),
the multi-scale image discriminator, the appearance encoder E_a with its identity heads and
the domain discriminator on the appearance feature.

Where METHODS.md leaves a size open (kernel sizes of the structure encoder, ASPP branch
widths, intermediate discriminator widths), the choice is stated in the class docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reidlab.nn.backbones import Backbone


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class LayerNorm(nn.Module):
    """DG-Net's LayerNorm: each sample normalised over all its channels and pixels with its
    mean and *unbiased* std, ``(x - mean) / (std + eps)``, then a per-channel affine
    (gamma ~ U(0, 1), beta = 0). Always computed in float32, one sample at a time (the
    authors' fp16 path pooled the statistics over the batch)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.rand(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            flat = x.float().flatten(1)
            mean = flat.mean(1).view(-1, 1, 1, 1)
            std = flat.std(1).view(-1, 1, 1, 1)
            y = (x.float() - mean) / (std + self.eps)
            return y * self.gamma.float().view(1, -1, 1, 1) + self.beta.float().view(1, -1, 1, 1)


def adaptive_instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                           eps: float = 1e-5) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017): instance-normalise ``x`` (per sample and channel over
    the pixels, biased variance) and apply the per-sample ``scale`` and ``bias`` ``(N, C)``,
    the scale as is (no ``1 +``, as in DG-Net)."""
    normed = F.instance_norm(x.float(), eps=eps).to(x.dtype)
    return normed * scale[:, :, None, None] + bias[:, :, None, None]


class ResidualBlock(nn.Module):
    """Two 3x3 convs (reflect padding) with a norm after each and LReLU after the first;
    ``norm``: ``instance``, ``adain`` (scale / bias given at call time) or ``none``."""

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "adain", "none"):
            raise ValueError(f"norm must be 'instance', 'adain' or 'none', got {norm!r}")
        self.norm = norm
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, padding_mode="reflect")
        self.act = _act()

    def _norm(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None):
        if self.norm == "instance":
            return F.instance_norm(x)
        if self.norm == "adain":
            return adaptive_instance_norm(x, *affine)
        return x

    def forward(self, x: torch.Tensor, affines: Sequence | None = None) -> torch.Tensor:
        """``affines``: two ``(scale, bias)`` pairs for ``norm="adain"``."""
        first, second = affines if affines is not None else (None, None)
        y = self.act(self._norm(self.conv1(x), first))
        return x + self._norm(self.conv2(y), second)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017): a 1x1 branch and one 3x3 branch per
    dilation, concatenated (``out_channels`` = (1 + len(dilations)) x branch width)."""

    def __init__(self, in_channels: int, out_channels: int = 128,
                 dilations: Sequence[int] = (3, 6, 9)) -> None:
        super().__init__()
        branches = 1 + len(dilations)
        if out_channels % branches:
            raise ValueError(f"out_channels={out_channels} must divide into {branches} branches")
        width = out_channels // branches
        self.branches = nn.ModuleList(
            [nn.Conv2d(in_channels, width, 1)]
            + [nn.Conv2d(in_channels, width, 3, padding=d, dilation=d) for d in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class StructureEncoder(nn.Module):
    """E_s: the channel mean of the normalised image (1 x H x W) -> a 128 x H/4 x W/4
    structure code. 3x3 convs 1->16 (stride 2), 16->32, 32->32, 32->64 (stride 2), each with
    InstanceNorm + LReLU(0.2); 4 residual blocks; ASPP (dilations 3, 6, 9; 4 x 32 channels)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 32, 64), code_channels: int = 128,
                 blocks: int = 4) -> None:
        super().__init__()
        layers, c_in = [], 1
        for k, c_out in enumerate(channels):
            stride = 2 if k in (0, len(channels) - 1) else 1
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, padding_mode="reflect"),
                       nn.InstanceNorm2d(c_out), _act()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*[ResidualBlock(c_in) for _ in range(blocks)])
        self.aspp = ASPP(c_in, code_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.blocks(self.convs(images.mean(1, keepdim=True))))


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), _act(), nn.Linear(hidden, hidden), _act(),
                         nn.Linear(hidden, out_dim))


class Decoder(nn.Module):
    """G: (structure code, appearance code) -> image. ``blocks`` AdaIN residual blocks at the
    code's resolution, block k's two AdaIN layers driven by the k-th slice of the
    appearance code through a scale MLP and a bias MLP (slice -> 512 -> 512 -> 2 x 128 with
    LReLU); then 2 x (nearest up-sampling x2 + 5x5 conv + :class:`LayerNorm` + LReLU)
    128 -> 64 -> 32, two 3x3 convs (32 -> 32, with LReLU) and a 1x1 conv to RGB (the
    normalised image space: no output squashing)."""

    def __init__(self, appearance_dim: int = 8192, code_channels: int = 128, blocks: int = 4,
                 mlp_hidden: int = 512, up_channels: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        if appearance_dim % blocks:
            raise ValueError(f"appearance_dim={appearance_dim} must split into {blocks} slices")
        self.blocks = nn.ModuleList(ResidualBlock(code_channels, "adain") for _ in range(blocks))
        slice_dim = appearance_dim // blocks
        self.scales = nn.ModuleList(_mlp(slice_dim, mlp_hidden, 2 * code_channels)
                                    for _ in range(blocks))
        self.biases = nn.ModuleList(_mlp(slice_dim, mlp_hidden, 2 * code_channels)
                                    for _ in range(blocks))
        layers, c_in = [], code_channels
        for c_out in up_channels:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c_in, c_out, 5, 1, 2, padding_mode="reflect"),
                       LayerNorm(c_out), _act()]
            c_in = c_out
        layers += [nn.Conv2d(c_in, c_in, 3, 1, 1, padding_mode="reflect"), _act(),
                   nn.Conv2d(c_in, c_in, 3, 1, 1, padding_mode="reflect"), _act(),
                   nn.Conv2d(c_in, 3, 1)]
        self.upsample = nn.Sequential(*layers)

    def forward(self, structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        x = structure
        for k, (block, scale_mlp, bias_mlp) in enumerate(
                zip(self.blocks, self.scales, self.biases, strict=True)):
            part = appearance.chunk(len(self.blocks), dim=1)[k]
            scale, bias = scale_mlp(part).chunk(2, dim=1), bias_mlp(part).chunk(2, dim=1)
            x = block(x, [(scale[0], bias[0]), (scale[1], bias[1])])
        return self.upsample(x)


class ImageDiscriminator(nn.Module):
    """The multi-scale LSGAN image discriminator: ``scales`` copies linked by AvgPool(3,
    stride 2, padding 1), each 1x1 conv 3->32, 3x3 32->32, 3x3 stride 2 32->32, 3x3 32->64,
    3x3 stride 2 64->64, ``blocks`` residual blocks and a 1x1 conv to one channel; LReLU, no
    normalisation, reflect padding, N(0, 0.02) init. Returns one patch map per scale."""

    def __init__(self, scales: int = 3, width: int = 32, blocks: int = 4) -> None:
        super().__init__()

        def conv(c_in, c_out, k, s=1):
            return [nn.Conv2d(c_in, c_out, k, s, k // 2, padding_mode="reflect"), _act()]

        self.nets = nn.ModuleList(
            nn.Sequential(*conv(3, width, 1), *conv(width, width, 3), *conv(width, width, 3, 2),
                          *conv(width, 2 * width, 3), *conv(2 * width, 2 * width, 3, 2),
                          *[ResidualBlock(2 * width, "none") for _ in range(blocks)],
                          nn.Conv2d(2 * width, 1, 1))
            for _ in range(scales))
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs, x = [], images
        for k, net in enumerate(self.nets):
            outputs.append(net(x))
            if k + 1 < len(self.nets):
                x = self.down(x)
        return outputs


class DomainDiscriminator(nn.Module):
    """DG-Net++'s domain discriminator on the global appearance feature: an MLP
    2048 -> 1024 -> 512 -> 256 -> 1 with BatchNorm + LReLU(0.2) between layers (LSGAN score:
    source 0, target 1)."""

    def __init__(self, in_dim: int = 2048, hidden: Sequence[int] = (1024, 512, 256)) -> None:
        super().__init__()
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), _act()]
            d = h
        self.net = nn.Sequential(*layers, nn.Linear(d, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


class IdentityHead(nn.Module):
    """One of E_a's identity heads: a kept ``bottleneck`` (Linear 2048 -> 512 + BN) and a
    ``classifier`` (Dropout + Linear 512 -> C) that DG-Net++ re-creates every round."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float, dim: int = 512) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim))
        self.dropout = dropout
        self.classifier = self.new_classifier(num_classes)

    def new_classifier(self, num_classes: int) -> nn.Sequential:
        """A freshly initialised classifier over ``num_classes`` (DG-Net++: each round)."""
        dim = self.bottleneck[0].out_features
        classifier = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(dim, num_classes))
        nn.init.normal_(classifier[1].weight, std=0.001)
        nn.init.zeros_(classifier[1].bias)
        return classifier.to(self.bottleneck[0].weight.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(512-d feature, logits)``."""
        feature = self.bottleneck(x)
        return feature, self.classifier(feature)


class AppearanceEncoder(nn.Module):
    """E_a: a backbone (ResNet-50 with last stride 1 in the papers) whose map is max-pooled
    into ``parts`` horizontal stripes for the appearance code (flattened channel-major as in
    the authors' code, so the decoder's slices are channel groups: ``parts x C`` = 8192-d)
    and globally for ``f_e`` (the domain discriminator's input and the heads' input: the
    primary head with dropout 0.5, the fine-grained one with 0.75).

    ``forward`` returns ``{"code", "global", "primary", "fine"}`` with each head's
    ``(feature, logits)``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, parts: int = 4,
                 dropouts: Sequence[float] = (0.5, 0.75)) -> None:
        super().__init__()
        self.backbone, self.parts = backbone, parts
        channels = backbone.out_channels
        self.primary = IdentityHead(channels, num_classes, dropouts[0])
        self.fine = IdentityHead(channels, num_classes, dropouts[1])

    @property
    def code_dim(self) -> int:
        return self.parts * self.backbone.out_channels

    def forward(self, images: torch.Tensor) -> dict:
        fmap = self.backbone(images)
        code = F.adaptive_max_pool2d(fmap, (self.parts, 1)).flatten(1)  # channel-major
        pooled = F.adaptive_max_pool2d(fmap, 1).flatten(1)
        return {"code": code, "global": pooled, "primary": self.primary(pooled),
                "fine": self.fine(pooled)}


class Generator(nn.Module):
    """One domain's generator: its :class:`StructureEncoder` and its :class:`Decoder`
    (DG-Net has one; DG-Net++ one per domain, both started from DG-Net's)."""

    def __init__(self, appearance_dim: int, structure_channels: Sequence[int] = (16, 32, 32, 64),
                 code_channels: int = 128, blocks: int = 4, mlp_hidden: int = 512,
                 up_channels: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.structure_encoder = StructureEncoder(structure_channels, code_channels, blocks)
        self.decoder = Decoder(appearance_dim, code_channels, blocks, mlp_hidden, up_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The structure code of ``images``."""
        return self.structure_encoder(images)

    def decode(self, structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        """The image with ``structure`` and ``appearance``."""
        return self.decoder(structure, appearance)
