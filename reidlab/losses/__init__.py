"""Losses: one concept per file."""

from reidlab.losses.arn import contrastive_loss, difference_loss, reconstruction_loss
from reidlab.losses.dcdfa import cross_domain_id_loss, domain_classification_loss
from reidlab.losses.isgan import (
    class_loss,
    domain_loss,
    kl_divergence_loss,
    part_classification_loss,
    part_shuffle,
    positive_indices,
    random_part_masks,
    shuffling_loss,
)
from reidlab.losses.memory import memory_contrastive_loss
from reidlab.losses.triplet import batch_hard_triplet_loss
from reidlab.losses.zero import zero_loss

__all__ = [
    "batch_hard_triplet_loss",
    "class_loss",
    "contrastive_loss",
    "cross_domain_id_loss",
    "difference_loss",
    "domain_classification_loss",
    "domain_loss",
    "kl_divergence_loss",
    "memory_contrastive_loss",
    "part_classification_loss",
    "part_shuffle",
    "positive_indices",
    "random_part_masks",
    "reconstruction_loss",
    "shuffling_loss",
    "zero_loss",
]
