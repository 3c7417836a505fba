"""DCDFA constraints on original and recomposed features (Zhang et al., "Unsupervised Domain
Adaptive Person Re-identification via Disentanglement-based Cross-Domain Feature
Augmentation", CVPR 2021, Sec. 3.3): cross-domain ReID (eq. 6) and domain classification
(eq. 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# order of the set {f^s_i, f^t_j, r^s_j, r^t_i}: identities i, j, j, i
_POSITIVE = (3, 2, 1, 0)
_NEGATIVES = ((1, 2), (0, 3), (0, 3), (1, 2))


def cross_domain_id_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    r_s: torch.Tensor,
    r_t: torch.Tensor,
    tau: torch.Tensor | float,
) -> torch.Tensor:
    """L_CID, DCDFA eq. 6, averaged over the pairs.

    Row k of the four ``(N, C)`` inputs is one pair (source image i, target image j):
    ``f_s[k] = f^s_i``, ``f_t[k] = f^t_j``, ``r_s[k] = r^s_j = b_j + e^s_i`` and
    ``r_t[k] = r^t_i = b_i + e^t_j``. Each element is an anchor in turn, with one positive (same
    identity: ``f^s_i <-> r^t_i``, ``f^t_j <-> r^s_j``) and the two other elements as
    negatives; with cosine similarities ``s``::

        L_CID = 1/4 sum_m log(1 + exp(-s_m^+ / tau) sum_n exp(s_mn^- / tau))

    computed as ``softplus(logsumexp(s^- / tau) - s^+ / tau)``.

    Args:
        f_s, f_t, r_s, r_t: ``(N, C)`` original and recomposed features.
        tau: temperature (the trainable scalar of the model, initialised to 1).
    """
    shapes = {tuple(x.shape) for x in (f_s, f_t, r_s, r_t)}
    if len(shapes) != 1 or f_s.ndim != 2:
        raise ValueError(f"f_s, f_t, r_s, r_t must share one (N, C) shape, got {shapes}")
    elems = F.normalize(torch.stack([f_s, f_t, r_s, r_t], dim=1), dim=2)  # (N, 4, C)
    sim = (elems @ elems.transpose(1, 2)) / tau  # (N, 4, 4)
    anchors = torch.arange(4, device=sim.device)
    s_pos = sim[:, anchors, torch.tensor(_POSITIVE, device=sim.device)]  # (N, 4)
    s_neg = sim[:, anchors[:, None], torch.tensor(_NEGATIVES, device=sim.device)]  # (N, 4, 2)
    return F.softplus(s_neg.logsumexp(2) - s_pos).mean()


def domain_classification_loss(
    logits_f_s: torch.Tensor,
    logits_r_s: torch.Tensor,
    logits_f_t: torch.Tensor,
    logits_r_t: torch.Tensor,
) -> torch.Tensor:
    """L_Domain, DCDFA eq. 7, averaged over the pairs.

    ``-1/4 (log p(f^s_i) + log p(r^s_j) + log(1 - p(f^t_j)) + log(1 - p(r^t_i)))`` with
    ``p = softmax(logits)[:, 1]`` the probability of "source", as a cross-entropy on the
    ``(N, 2)`` domain-classifier logits (source = 1, target = 0).
    """
    shapes = {tuple(x.shape) for x in (logits_f_s, logits_r_s, logits_f_t, logits_r_t)}
    if len(shapes) != 1 or logits_f_s.ndim != 2 or logits_f_s.shape[1] != 2:
        raise ValueError(f"the four logits must share one (N, 2) shape, got {shapes}")
    logits = torch.cat([logits_f_s, logits_r_s, logits_f_t, logits_r_t])
    n = len(logits_f_s)
    domain = torch.cat([logits.new_ones(2 * n), logits.new_zeros(2 * n)]).long()
    return F.cross_entropy(logits, domain)
