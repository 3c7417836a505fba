"""Similarity of classification-score vectors (IICS inter-camera similarity, eq. 9)."""

from __future__ import annotations

import torch
from torch import Tensor


def score_jaccard(scores_a: Tensor, scores_b: Tensor) -> Tensor:
    """Jaccard similarity of non-negative score vectors for every pair (IICS eq. 9):

        Delta(s_m, s_n) = sum_k min(s_m,k, s_n,k) / sum_k max(s_m,k, s_n,k)

    Computed without the (A, B, D) tensor of element-wise minima: since ``min + max = a + b``
    and ``max - min = |a - b|``, ``Delta = (S_m + S_n - L1) / (S_m + S_n + L1)`` with
    ``S = sum_k s_k`` and ``L1 = ||s_m - s_n||_1`` (``torch.cdist`` with p = 1), so a block
    needs O(A * B) memory. Two all-zero vectors get 0.

    Args:
        scores_a: (A, D) non-negative scores, e.g. concatenated per-camera softmax (eq. 10).
        scores_b: (B, D) on the same device.

    Returns:
        (A, B) similarities in [0, 1], in the scores' floating dtype (integers: float32).
    """
    if scores_a.dim() != 2 or scores_b.dim() != 2 or scores_a.shape[1] != scores_b.shape[1]:
        raise ValueError(f"score_jaccard needs (A, D) and (B, D) scores, got "
                         f"{tuple(scores_a.shape)} and {tuple(scores_b.shape)}")
    if not scores_a.is_floating_point():
        scores_a = scores_a.float()
    scores_b = scores_b.to(scores_a)
    l1 = torch.cdist(scores_a[None], scores_b[None], p=1)[0]
    total = scores_a.sum(1)[:, None] + scores_b.sum(1)[None, :]
    union = total + l1
    sim = (total - l1) / union.clamp_min(torch.finfo(union.dtype).tiny)
    return sim.clamp_(0, 1)
