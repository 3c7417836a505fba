"""BatchNorm statistics: re-estimating them on a domain's images (AdaBN)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def reestimate_bn_statistics(module: nn.Module, batches: Iterable[torch.Tensor],
                             forward: Callable[[torch.Tensor], object] | None = None) -> int:
    """Replace the running statistics of every BatchNorm in ``module`` by those of
    ``batches`` (AdaBN: Li et al., "Revisiting Batch Normalization For Practical Domain
    Adaptation", ICLR-W 2017; in re-ID the standard "direct transfer + target BN" reference).

    The statistics are reset, then each BN's running mean and variance become the plain
    average of the per-batch statistics over all batches (``momentum=None``); weights are
    not touched. ``module`` is in train mode during the pass and restored after.

    Args:
        module: the network (or the part of it whose BNs are re-estimated).
        batches: image batches (already on the module's device), e.g. the target's
            training images with the test transform.
        forward: what to call on each batch (default ``module``).

    Returns:
        The number of images seen.
    """
    norms = [m for m in module.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        raise ValueError(f"{type(module).__name__} has no BatchNorm with running statistics")
    momenta = [m.momentum for m in norms]
    was_training = module.training
    seen = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        module.train()
        for images in batches:
            (forward or module)(images)
            seen += len(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.train(was_training)
    if seen == 0:
        raise ValueError("no images to re-estimate BatchNorm statistics from")
    return seen
