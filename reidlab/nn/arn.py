"""ARN building blocks (Li et al., "Adaptation and Re-Identification Network: An
Unsupervised Deep Transfer Learning Approach to Person Re-Identification", CVPR-W 2018,
Sec. 3 and 4.2): latent encoders E_C / E_S / E_T on the backbone's feature map X, and
the decoder D_C that reconstructs X from the latent features.

Two encoder forms:

* :class:`ConvLatentEncoder` (the paper's): a three-layer fully convolutional network on
  X (the last backbone stage's map), globally average-pooled to a ``latent_dim`` vector;
* :class:`StageLatentEncoder` (the authors' public code): an independent copy of the
  last backbone stage (``layer4``) on the ``layer3`` map, average-pooled; the copies
  start from the same weights (:meth:`~reidlab.nn.Backbone.pop_last_stage` takes the
  stage out of the backbone).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from reidlab.nn.backbones import stage_out_channels


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                      bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ConvLatentEncoder(nn.Module):
    """E_C / E_S / E_T as in the paper: three convolutional layers on X, then global average
    pooling to a ``latent_dim`` vector (the paper's 7x7x2048 -> 1x1x2048, flattened).

    The paper gives neither kernels nor widths; this is a ResNet-style bottleneck, so three
    encoders on a 2048-channel map cost 3 x 4.5M parameters instead of 3 x 75M for three
    full-width 3x3 layers: 1x1 conv ``in -> hidden`` + BN + ReLU, 3x3 conv ``hidden ->
    hidden`` + BN + ReLU, 1x1 conv ``hidden -> latent_dim`` (linear, with bias, so the
    latent feature is signed). Works on maps of any spatial size.

    Args:
        in_channels: channels of X.
        latent_dim: size of the latent feature (2048 in the paper).
        hidden: width of the two inner layers (default ``in_channels // 4``).
    """

    def __init__(self, in_channels: int, latent_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(in_channels // 4, 1)
        self.body = nn.Sequential(*_conv_bn_relu(in_channels, hidden, 1),
                                  *_conv_bn_relu(hidden, hidden, 3),
                                  nn.Conv2d(hidden, latent_dim, 1))
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, latent_dim)``."""
        return self.body(x).mean(dim=(2, 3))


class StageLatentEncoder(nn.Module):
    """E_C / E_S / E_T as in the authors' code: a copy of a backbone stage (``layer4``) on
    the previous stage's map, then global average pooling.

    Args:
        stage: the stage to copy (deep-copied: every encoder owns its parameters, all
            starting from the same weights).
    """

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = copy.deepcopy(stage)
        self.latent_dim = stage_out_channels(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, latent_dim)``."""
        return self.stage(x).mean(dim=(2, 3))


class LatentDecoder(nn.Module):
    """D_C: reconstructs the feature map X from a latent vector (the paper: the
    concatenation (e_c, e_p), 4096 -> 7x7x2048, fully convolutional).

    The vector is a 1x1 map; a 1x1 conv mixes it (``in -> hidden``), a transposed
    convolution with a ``grid``-sized kernel spreads it to a position-dependent
    ``hidden x grid`` map (the paper's 1x1 -> 7x7 step), which is resized bilinearly to
    X's spatial size given at call time (a no-op when it equals ``grid``), so any input
    image size works; a 3x3 conv and a 1x1 conv to ``out_channels`` follow. All layers but
    the last have BN + ReLU; the last is linear.

    Args:
        in_features: latent input size (2 x latent_dim, or latent_dim without private
            encoders).
        out_channels: channels of X.
        grid: spatial size of the learned map before resizing; X's usual size is best
            (7x7 for the paper's 224x224 inputs).
        hidden: width of the inner layers (default ``out_channels // 4``).
    """

    def __init__(self, in_features: int, out_channels: int, grid: tuple[int, int] = (7, 7),
                 hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(out_channels // 4, 1)
        self.expand = nn.Sequential(
            *_conv_bn_relu(in_features, hidden, 1),
            nn.ConvTranspose2d(hidden, hidden, tuple(grid), bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.refine = nn.Sequential(*_conv_bn_relu(hidden, hidden, 3),
                                    nn.Conv2d(hidden, out_channels, 1))

    def forward(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(N, in_features) -> (N, out_channels, *size)``."""
        x = self.expand(z[:, :, None, None])
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return self.refine(x)
