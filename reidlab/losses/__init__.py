"""Losses: one concept per file."""

from reidlab.losses.dcdfa import cross_domain_id_loss, domain_classification_loss
from reidlab.losses.memory import memory_contrastive_loss
from reidlab.losses.triplet import batch_hard_triplet_loss

__all__ = [
    "batch_hard_triplet_loss",
    "cross_domain_id_loss",
    "domain_classification_loss",
    "memory_contrastive_loss",
]
