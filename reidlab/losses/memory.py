"""Memory contrastive loss with circle-loss re-weighting, the memory-bank loss of the SBase
strong baseline (Zhang et al., "DCDFA", CVPR 2021, Sec. 4.1; Sun et al., "Circle Loss", CVPR
2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidlab.losses.zero import zero_loss
from reidlab.nn.memory import MemoryBank


def memory_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    is_source: torch.Tensor,
    memory: MemoryBank,
    target_labels: torch.Tensor,
    margin: float = 0.25,
    gamma: float = 128.0,
) -> torch.Tensor:
    """Circle loss between each query and every entry of a :class:`MemoryBank`.

    With ``s`` the cosine similarity of a query to the C source prototypes and the N_t
    target entries: a source query of class y has the prototype y as only positive; a target
    query with pseudo-label y has the target entries j with ``target_labels[j] == y`` (its own
    entry included). Every other entry is a negative (outlier entries, label -1, included).
    With ``alpha_p = [1 + m - s_p]_+`` and ``alpha_n = [s_n + m]_+`` (detached),
    ``Delta_p = 1 - m``, ``Delta_n = m``, the loss of a query is (Circle Loss, eq. 6)::

        softplus(logsumexp_p(-gamma * alpha_p * (s_p - Delta_p))
                 + logsumexp_n(gamma * alpha_n * (s_n - Delta_n)))

    Target queries labelled -1, and queries without a positive or without a negative, are
    left out; the mean is over the others (0, keeping the graph, when there is none).
    Similarities are computed in float32, also under mixed precision.

    Args:
        features: ``(B, D)`` query features (normalised here).
        labels: ``(B,)`` source class ids / target pseudo-labels.
        is_source: ``(B,)`` bool, True for source queries.
        memory: the memory bank (read only).
        target_labels: ``(N_t,)`` pseudo-label of every target memory entry, -1 for outliers.
        margin: m, the relaxation margin.
        gamma: the scale factor.
    """
    num_source, num_target = memory.source.shape[0], memory.target.shape[0]
    if target_labels.shape != (num_target,):
        raise ValueError(f"target_labels must have shape ({num_target},), "
                         f"got {tuple(target_labels.shape)}")
    feats = F.normalize(features.float(), dim=1)
    with torch.autocast(feats.device.type, enabled=False):  # gamma = 128 needs fp32 cosines
        sim = feats @ torch.cat([memory.source, memory.target]).float().T  # (B, C + N_t)

    labels = labels.to(sim.device, torch.long)
    is_source = is_source.to(sim.device, torch.bool)
    target_labels = target_labels.to(sim.device, torch.long)
    cols = torch.arange(num_source + num_target, device=sim.device)
    src_pos = is_source[:, None] & (cols[None, :] == labels[:, None])
    entry_labels = torch.cat([target_labels.new_full((num_source,), -1), target_labels])
    tgt_pos = ((~is_source & (labels >= 0))[:, None] & (entry_labels[None, :] == labels[:, None]))
    pos = src_pos | tgt_pos
    valid = (is_source | (labels >= 0)) & pos.any(1) & (~pos).any(1)
    if not valid.any():
        return zero_loss(features)
    sim, pos = sim[valid], pos[valid]

    alpha_p = (1 + margin - sim).clamp_min(0).detach()
    alpha_n = (sim + margin).clamp_min(0).detach()
    logit_p = (-gamma * alpha_p * (sim - (1 - margin))).masked_fill(~pos, float("-inf"))
    logit_n = (gamma * alpha_n * (sim - margin)).masked_fill(pos, float("-inf"))
    return F.softplus(logit_p.logsumexp(1) + logit_n.logsumexp(1)).mean()
