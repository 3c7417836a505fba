"""IS-GAN's networks (Eom & Ham, "Learning Disentangled Representation for Robust Person
Re-identification", NeurIPS 2019, Sec. 3 and 4.1): the identity-related encoder E_R, the
identity-unrelated encoder E_U, the generator G and the discriminator with its domain (D_D)
and class (D_C) heads. Both encoders read the map of a shared trunk (:mod:`reidlab.nn.parts`).

Sizes follow the input resolution: at the paper's 384 x 128 the generator starts from a
6 x 2 map and doubles it six times, the discriminator halves the image five times to a
12 x 4 map; smaller CPU images get fewer doublings / halvings (:func:`generator_layout`,
:func:`discriminator_depth`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reidlab.nn.parts import PartBranches

# the paper's widths: the generator's FC / first map, then its five doubling convs
GENERATOR_CHANNELS = (512, 512, 512, 256, 128, 64)
DISCRIMINATOR_CHANNELS = (32, 64, 128, 256, 256)


class IdentityEncoder(nn.Module):
    """E_R (paper Sec. 3.2): max-pooled part features, a 1x1 conv + BN reduction per part
    (``part_dim`` = 256 in the paper: 8 x 256 = 2048-d phi_R), one classifier per part.

    ``forward`` returns ``{"parts": (N, P, part_dim), "feature": (N, P * part_dim),
    "logits": [P x (N, C)]}``.
    """

    def __init__(self, branches: PartBranches, num_classes: int, part_dim: int = 256) -> None:
        super().__init__()
        self.branches = branches
        channels = branches.out_channels
        self.reductions = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, part_dim, bias=False), nn.BatchNorm1d(part_dim))
            for _ in range(branches.num_parts))
        self.classifiers = nn.ModuleList(nn.Linear(part_dim, num_classes)
                                         for _ in range(branches.num_parts))
        for reduction in self.reductions:
            nn.init.kaiming_normal_(reduction[0].weight, mode="fan_in")
        for classifier in self.classifiers:
            nn.init.kaiming_normal_(classifier.weight, mode="fan_out")
            nn.init.zeros_(classifier.bias)

    @property
    def feature_dim(self) -> int:
        return sum(r[0].out_features for r in self.reductions)

    def forward(self, x: torch.Tensor) -> dict:
        pooled = self.branches(x)
        parts = torch.stack([r(pooled[:, k]) for k, r in enumerate(self.reductions)], dim=1)
        logits = [c(parts[:, k]) for k, c in enumerate(self.classifiers)]
        return {"parts": parts, "feature": parts.flatten(1), "logits": logits}


class UnrelatedEncoder(nn.Module):
    """E_U (paper Sec. 3.3): its own branches (average-pooled), per-part mean and
    log-variance heads (``code_dim`` = 64: 8 x 64 = 512-d phi_U), reparameterised in
    training (z = mu + sigma * eps), the mean in eval mode.

    ``forward`` returns ``{"code": (N, P * code_dim), "mu", "logvar": (N, P, code_dim)}``.
    """

    def __init__(self, branches: PartBranches, code_dim: int = 64) -> None:
        super().__init__()
        self.branches = branches
        channels, parts = branches.out_channels, branches.num_parts
        self.mu = nn.ModuleList(nn.Linear(channels, code_dim) for _ in range(parts))
        self.logvar = nn.ModuleList(nn.Linear(channels, code_dim) for _ in range(parts))

    @property
    def feature_dim(self) -> int:
        return sum(h.out_features for h in self.mu)

    def forward(self, x: torch.Tensor) -> dict:
        pooled = self.branches(x)
        mu = torch.stack([h(pooled[:, k]) for k, h in enumerate(self.mu)], dim=1)
        logvar = torch.stack([h(pooled[:, k]) for k, h in enumerate(self.logvar)], dim=1)
        code = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return {"code": code.flatten(1), "mu": mu, "logvar": logvar}


def _twos(n: int) -> int:
    """How many times ``n`` divides by 2."""
    return (n & -n).bit_length() - 1


def generator_layout(height: int, width: int, max_doublings: int = 6) -> tuple[int, int, int]:
    """``(doublings, base_height, base_width)``: the generator's first map and how often it
    is doubled to reach ``height x width`` (384 x 128: 6 doublings from 6 x 2)."""
    doublings = min(max_doublings, _twos(height), _twos(width))
    if doublings < 2:
        raise ValueError(f"the IS-GAN generator doubles its map at least twice: {height} x "
                         f"{width} must be divisible by 4 (use e.g. 96 x 48 or 384 x 128)")
    return doublings, height >> doublings, width >> doublings


def discriminator_depth(height: int, width: int, max_halvings: int = 5) -> int:
    """Stride-2 blocks of the discriminator: five at 384 x 128 (a 12 x 4 map), fewer when
    the map would get under 3 pixels (the heads' two 4x4 convs need 3)."""
    halvings = 0
    while halvings < max_halvings and min(height, width) >> (halvings + 1) >= 3:
        halvings += 1
    if halvings < 2:
        raise ValueError(f"{height} x {width} images are too small for the IS-GAN "
                         "discriminator (at least 12 x 12)")
    return halvings


def _scaled(channels: Sequence[int], factor: float) -> list[int]:
    return [max(4, round(c * factor)) for c in channels]


class Generator(nn.Module):
    """G (paper Sec. 4.1): ``[phi_R, phi_U, noise, one-hot id]`` -> FC + BN + LReLU(0.2) +
    Dropout(0.2) -> a transposed conv to the base map -> doubling transposed convs
    (k4 s2 p1; BN, LReLU, Dropout after all but the last) -> a last doubling conv to RGB +
    tanh. Convs without bias, kaiming init, BN weights ~ N(1, 0.02).

    Args:
        identity_dim, unrelated_dim: widths of phi_R and phi_U.
        num_classes: identities of the one-hot label.
        height, width: output image size (see :func:`generator_layout`).
        noise_dim: noise vector (128).
        width_factor: channel multiplier of :data:`GENERATOR_CHANNELS` (< 1 on CPU).
        dropout: dropout probability (0.2).
    """

    def __init__(self, identity_dim: int, unrelated_dim: int, num_classes: int,
                 height: int = 384, width: int = 128, noise_dim: int = 128,
                 width_factor: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        doublings, base_h, base_w = generator_layout(height, width)
        self.num_classes, self.noise_dim = num_classes, noise_dim
        first, *ups = _scaled(GENERATOR_CHANNELS, width_factor)
        ups = [first, *ups[len(ups) - (doublings - 1):]]  # the last doubling maps to RGB

        def block(c_in: int, c_out: int, kernel, stride: int, padding: int, drop: bool):
            layers = [nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=False),
                      nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
            return layers + ([nn.Dropout(dropout)] if drop else [])

        self.fc = nn.Sequential(
            nn.Linear(identity_dim + unrelated_dim + noise_dim + num_classes, first, bias=False),
            nn.BatchNorm1d(first), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout))
        layers = block(first, first, (base_h, base_w), 1, 0, drop=True)
        for k, (c_in, c_out) in enumerate(zip(ups[:-1], ups[1:], strict=True)):
            layers += block(c_in, c_out, 4, 2, 1, drop=k < len(ups) - 2)
        layers += [nn.ConvTranspose2d(ups[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.deconvs = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0.2)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, identity: torch.Tensor, unrelated: torch.Tensor, labels: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] (the tanh of a normalised image) from the codes and ids."""
        if noise is None:
            noise = torch.randn(len(identity), self.noise_dim, device=identity.device,
                                dtype=identity.dtype)
        onehot = F.one_hot(labels, self.num_classes).to(identity.dtype)
        x = self.fc(torch.cat([identity, unrelated, noise, onehot], dim=1))
        return self.deconvs(x[:, :, None, None])


class Discriminator(nn.Module):
    """D_D and D_C over shared blocks (paper Sec. 4.1): a k4 s2 conv (no norm), then k4 s2
    convs with InstanceNorm (no affine) + LReLU(0.2) (to 256 x 12 x 4 at 384 x 128).

    * domain head D_D (PatchGAN): k4 s1 conv + IN + LReLU, k4 s1 conv to one channel; it
      returns logits (the paper's sigmoid is in the BCE-with-logits loss);
    * class head D_C: k4 s1 conv + IN + LReLU, global average pooling (the authors' fixed
      12 x 4 pooling does not fit the 11 x 3 map it gets), Linear to the identities.

    Real images enter as ``tanh(normalised image)``, fakes as the generator's output.

    Args:
        num_classes: identities of the class head.
        height, width: input size (see :func:`discriminator_depth`).
        width_factor: channel multiplier of :data:`DISCRIMINATOR_CHANNELS` (32 ... 256).
    """

    def __init__(self, num_classes: int, height: int = 384, width: int = 128,
                 width_factor: float = 1.0) -> None:
        super().__init__()
        depth = discriminator_depth(height, width)
        channels = _scaled(DISCRIMINATOR_CHANNELS, width_factor)[:depth]
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 4, 2, 1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.InstanceNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.blocks = nn.Sequential(*layers)
        top = channels[-1]
        self.domain_head = nn.Sequential(
            nn.Conv2d(top, top, 4, 1, 1), nn.InstanceNorm2d(top), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(top, 1, 4, 1, 1))
        self.class_head = nn.Sequential(
            nn.Conv2d(top, top, 4, 1, 1), nn.InstanceNorm2d(top), nn.LeakyReLU(0.2, inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(top, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(domain logits (N, 1, h, w), class logits (N, C))``."""
        x = self.blocks(images)
        return self.domain_head(x), self.class_head(x)
