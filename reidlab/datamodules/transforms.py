"""Re-ID image pipelines with torchvision.transforms.v2.

Train: resize, horizontal flip, pad + random crop, to float tensor, normalise, random
erasing (the usual BoT / MMT recipe). Test: resize, to float tensor, normalise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR,
                  "bicubic": v2.InterpolationMode.BICUBIC}


def build_transforms(
    height: int = 256,
    width: int = 128,
    train: bool = True,
    flip_p: float = 0.5,
    padding: int = 10,
    erasing_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The train or test pipeline for ``height`` x ``width`` images.

    Args:
        height: output height.
        width: output width.
        train: add flip, pad + crop and random erasing.
        flip_p: horizontal flip probability (train).
        padding: pixels padded before the random crop (train; 0 disables).
        erasing_p: random erasing probability (train; 0 disables).
        mean: normalisation mean.
        std: normalisation std.
        interpolation: resize filter, ``bilinear`` or ``bicubic`` (IS-GAN's).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    size = (height, width)
    steps: list = [v2.ToImage(),
                   v2.Resize(size, interpolation=INTERPOLATIONS[interpolation], antialias=True)]
    if train:
        if flip_p > 0:
            steps.append(v2.RandomHorizontalFlip(flip_p))
        if padding > 0:
            steps += [v2.Pad(padding), v2.RandomCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train and erasing_p > 0:
        steps.append(v2.RandomErasing(p=erasing_p, value=0))
    return v2.Compose(steps)
