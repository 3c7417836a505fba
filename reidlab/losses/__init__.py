"""Losses: one concept per file."""

from reidlab.losses.triplet import batch_hard_triplet_loss

__all__ = ["batch_hard_triplet_loss"]
