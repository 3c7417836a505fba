"""A zero loss term that keeps parameters in the autograd graph."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def zero_loss(*parts: torch.Tensor | nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    """``0 * sum`` of ``parts``: a zero that depends on them.

    DDP (``find_unused_parameters=False``, the fast default) needs every parameter that
    requires a gradient to receive one in every step; a loss that is skipped in a step (no
    pseudo-label in the batch, an ablation switch off, a frozen stage) adds this term so its
    parameters get a zero gradient instead of none.

    Args:
        parts: tensors, modules (their parameters that require gradients) or iterables of
            tensors.
    """
    tensors: list[torch.Tensor] = []
    for part in parts:
        if isinstance(part, nn.Module):
            tensors += [p for p in part.parameters() if p.requires_grad]
        elif isinstance(part, torch.Tensor):
            tensors.append(part)
        else:
            tensors += list(part)
    if not tensors:
        raise ValueError("zero_loss needs at least one tensor or parameter")
    return 0.0 * sum(t.sum() for t in tensors)
