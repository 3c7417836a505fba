"""DCDFA: Disentanglement-based Cross-Domain Feature Augmentation (Zhang et al., CVPR 2021),
on top of :class:`~reidlab.modules.sbase.SBase`.

The student's pooled feature is split by a CBAM channel attention ``m(F)`` into a
domain-shared base and a domain-specific enhancement, ``b = m(F) * f``, ``e = (1 - m(F)) *
f`` (eq. 2-3). Source and target samples are paired one-to-one at random and their bases
swapped: ``r^t_i = b_i + e^t_j``, ``r^s_j = b_j + e^s_i`` (eq. 5). Losses on top of SBase's:
the cross-domain ID loss L_CID (eq. 6, trainable temperature), the domain classification
loss L_Domain (eq. 7) and L_RReID^b, the basic re-ID loss on the bases b_j of target samples
(Sec. 3.3). At test time the teacher's f = b + e is used and the attention is discarded.

Feature spaces: the decomposition and recomposition (eq. 2-5) are on f, as the paper
writes them, and so is the domain classifier's input. L_CID compares its four elements by
cosine with tau = 1, a range in which cosines of f (all ~0.99) carry no signal; its
elements go through the BNNeck first (the real f^s, f^t: their batch's BNNeck feature; the
recompositions r^t, r^s: the neck's BN with the batch statistics of the real batch of the
domain they belong to), as the memory of SBase does. L_RReID^b classifies the BNNeck
feature of b (normalised with its own batch statistics, running statistics untouched).
"""

from __future__ import annotations

import torch
from torch import nn

from reidlab.losses import cross_domain_id_loss, domain_classification_loss, zero_loss
from reidlab.modules.sbase import SOURCE, TARGET, SBase
from reidlab.nn import ChannelAttention, DomainClassifier, bn_domain

# The paper leaves the trainable temperature unconstrained; a temperature driven to 0 or
# below would make L_CID blow up, so it is clamped here (inactive in normal training).
MIN_TAU = 0.01


class DCDFA(SBase):
    """SBase + DCDFA. Takes every :class:`SBase` argument, plus:

    Args:
        reduction: channel-attention reduction ratio r (8).
        domain_dropout: dropout of the domain classifier blocks (0.1).
        tau: initial value of the trainable L_CID temperature (1; clamped at 0.01).
        cid: use L_CID (paper Table 3 switch).
        domain: use L_Domain (Table 3).
        base_reid: use L_RReID^b (Table 3).
        cid_weight: weight of L_CID (1).
        domain_weight: weight of L_Domain (1).
        base_reid_weight: weight of L_RReID^b (1).
        test_with_base: test with the teacher's base feature b instead of f (the
            "using b_j" row of Table 2).
        **kwargs: :class:`SBase` arguments.
    """

    def __init__(
        self,
        reduction: int = 8,
        domain_dropout: float = 0.1,
        tau: float = 1.0,
        cid: bool = True,
        domain: bool = True,
        base_reid: bool = True,
        cid_weight: float = 1.0,
        domain_weight: float = 1.0,
        base_reid_weight: float = 1.0,
        test_with_base: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.domain_classifier = DomainClassifier(self.feature_dim, reduction, domain_dropout)
        self.tau = nn.Parameter(torch.tensor(float(tau)))

    def build_attention(self, channels: int) -> nn.Module:
        return ChannelAttention(channels, self.hparams.reduction)

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        with bn_domain(self, TARGET):
            fmap, f = self.test_encoder(images)
        if self.hparams.test_with_base:
            return self.test_encoder.attention(fmap) * f
        return f

    def pairing(self, num_source: int, num_target: int, device: torch.device) -> torch.Tensor:
        """Target partner of each of the first ``min(Ns, Nt)`` source samples: a random
        one-to-one pairing, drawn from the global step and rank (reproducible on resume)."""
        gen = torch.Generator().manual_seed(self.global_step * 65_537 + self.global_rank)
        n = min(num_source, num_target)
        return torch.randperm(num_target, generator=gen)[:n].to(device)

    def training_losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict]:
        losses, out = super().training_losses(batch)
        hp = self.hparams
        src, tgt = out["source"], out["target"]
        attention = self.student.attention
        m_s, m_t = attention(src["fmap"]), attention(tgt["fmap"])
        b_s, e_s = m_s * src["f"], (1 - m_s) * src["f"]  # eq. 2
        b_t, e_t = m_t * tgt["f"], (1 - m_t) * tgt["f"]
        j = self.pairing(len(b_s), len(b_t), b_s.device)
        i = torch.arange(len(j), device=j.device)
        f_s, f_t = src["f"][i], tgt["f"][j]
        r_t = b_s[i] + e_t[j]  # eq. 5: identity of source i, target domain
        r_s = b_t[j] + e_s[i]  # identity of target j, source domain
        if hp.cid:  # on BNNeck features, see the module docstring
            tau = self.tau.clamp_min(MIN_TAU)
            losses["cid"] = hp.cid_weight * cross_domain_id_loss(
                src["bn"][i], tgt["bn"][j],
                self.neck_batch_norm(r_s, SOURCE, statistics_of=src["f"]),
                self.neck_batch_norm(r_t, TARGET, statistics_of=tgt["f"]), tau)
        else:
            losses["cid"] = zero_loss(self.tau)
        if hp.domain:
            logits = self.domain_classifier(torch.cat([f_s, r_s, f_t, r_t]))
            losses["domain"] = hp.domain_weight * domain_classification_loss(
                *logits.split(len(j)))
        else:
            losses["domain"] = zero_loss(self.domain_classifier)
        if hp.base_reid:
            losses["base_reid"] = hp.base_reid_weight * self.target_reid_loss(
                b_t, self.neck_batch_norm(b_t, TARGET), out["t_pid"])
        if not (hp.cid or hp.domain or hp.base_reid):  # the attention is unused
            losses["attention"] = zero_loss(attention)
        return losses, out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/tau", self.tau.detach(), batch_size=len(batch["source"][1]))
        return loss
