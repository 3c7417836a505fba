"""IS-GAN's losses (Eom & Ham, NeurIPS 2019, eq. 1 and 3-7) and the part-level shuffling
operator S of eq. 4.

Images are compared in the generator's range: the reconstruction target of an image x is
``tanh(x)`` of the normalised image. ``||.||_1`` is the mean absolute error per element;
every image of a batch is an anchor with a positive of the same id, so a term "i = anchor"
of eq. 3 / 4 is averaged over the batch (a pair's "i = positive" terms are those of the
positive as an anchor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def part_classification_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """L_R (eq. 1): the mean over parts of each part classifier's cross-entropy."""
    return torch.stack([F.cross_entropy(z, labels) for z in logits]).mean()


def kl_divergence_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_U (eq. 5): KL(N(mu, sigma^2) || N(0, 1)) summed over the batch and the code
    dimensions of each part, averaged over the parts.

    Args:
        mu, logvar: ``(N, P, D)`` means and log-variances of E_U's part codes.
    """
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl.sum(dim=(0, 2)).mean()


def shuffling_loss(target: torch.Tensor, generated: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_S (eq. 3) or L_PS (eq. 4): the sum over generations of the mean L1 distance to the
    image they should reproduce.

    L_S: ``generated = [G(phi_R(I), phi_U(I)), G(phi_R(I_pos), phi_U(I))]``;
    L_PS: ``generated = [G(S(phi_R(I), phi_R(I_pos)), phi_U(I))]``; ``target = tanh(I)``.
    """
    return sum(F.l1_loss(g, target) for g in generated)


def positive_indices(labels: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """For every sample, a random other sample of the same label (itself if it has none):
    the anchor / positive pairs of a P x K batch."""
    same = labels[:, None] == labels[None, :]
    others = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    weights = torch.where(others.any(1, keepdim=True), others, same).float()
    return torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(labels.device)


def random_part_masks(num: int, eligible: Sequence[bool],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``(num, P)`` boolean masks, each a uniformly drawn non-empty, proper subset of the
    ``eligible`` parts (never all of them, never none)."""
    where = torch.tensor(eligible, dtype=torch.bool).nonzero().squeeze(1)
    k = len(where)
    if k < 2:
        raise ValueError(f"part-level shuffling needs at least 2 eligible parts, got {k}")
    codes = torch.randint(1, 2 ** k - 1, (num,), generator=generator)  # not 0, not all ones
    bits = (codes[:, None] >> torch.arange(k)) & 1
    masks = torch.zeros(num, len(eligible), dtype=torch.bool)
    masks[:, where] = bits.bool()
    return masks


def part_shuffle(anchor: torch.Tensor, positive: torch.Tensor,
                 masks: torch.Tensor) -> torch.Tensor:
    """S(phi_R(I_a), phi_R(I_p)) of eq. 4: the anchor's part features with those under
    ``masks`` taken from the positive at the same locations.

    Args:
        anchor, positive: ``(N, P, D)`` part features.
        masks: ``(N, P)`` parts to swap (:func:`random_part_masks`).
    """
    return torch.where(masks.to(anchor.device)[:, :, None], positive, anchor)


def domain_loss(logits: torch.Tensor, real: bool, noisy_labels: bool = False) -> torch.Tensor:
    """One side of L_D (eq. 6) as binary cross-entropy on D_D's PatchGAN logits: targets 1
    for real, 0 for fake; ``noisy_labels`` draws them from U(0.7, 1) and U(0, 0.3) per
    patch, as the authors' code does."""
    if noisy_labels:
        low = 0.7 if real else 0.0
        targets = low + 0.3 * torch.rand_like(logits, dtype=torch.float32)
    else:
        targets = torch.full_like(logits, float(real), dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def class_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """L_C (eq. 7): the sum over image groups (real images, identity-shuffled and
    part-shuffled generations) of D_C's mean cross-entropy against the true ids."""
    return sum(F.cross_entropy(z.float(), labels) for z in logits)
