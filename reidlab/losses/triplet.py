"""Batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss", 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidlab.losses.zero import zero_loss


def batch_hard_triplet_loss(
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float | None = 0.3,
    normalize: bool = False,
) -> torch.Tensor:
    """Mean over anchors of ``[d(a, hardest p) - d(a, hardest n) + margin]_+``.

    Distances are Euclidean. ``margin=None`` gives the soft-margin form
    ``log(1 + exp(d_ap - d_an))``. Anchors without a positive or without a negative in
    the batch are left out; a batch with no valid anchor gives 0 (keeping the graph).

    Args:
        features: ``(N, D)`` embeddings.
        pids: ``(N,)`` identity labels.
        margin: hinge margin, or None for the soft margin.
        normalize: L2-normalise the features first.
    """
    if normalize:
        features = F.normalize(features, dim=1)
    sq = features.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * features @ features.T).clamp_min(1e-12).sqrt()
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return zero_loss(features)
    d_ap = dist.masked_fill(~pos_mask, float("-inf")).amax(1)[valid]
    d_an = dist.masked_fill(~neg_mask, float("inf")).amin(1)[valid]
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(d_ap - d_an + margin).mean()
