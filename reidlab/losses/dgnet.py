"""DG-Net / DG-Net++ adversarial losses: LSGAN on the multi-scale image discriminator, the
R1 penalty on real images, and the LSGAN domain loss on appearance features (METHODS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def lsgan_discriminator_loss(real: Sequence[torch.Tensor],
                             fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """D side, summed over scales: ``mean((D(real) - 1)^2) + mean(D(fake)^2)``."""
    return sum(((r.float() - 1) ** 2).mean() + (f.float() ** 2).mean()
               for r, f in zip(real, fake, strict=True))


def lsgan_generator_loss(fake: Sequence[torch.Tensor], weight: float = 2.0) -> torch.Tensor:
    """G side, summed over scales: ``weight * mean((D(fake) - 1)^2)`` (DG-Net: weight 2)."""
    return sum(weight * ((f.float() - 1) ** 2).mean() for f in fake)


def r1_penalty(discriminator: Callable[[torch.Tensor], Sequence[torch.Tensor]],
               real: torch.Tensor, weight: float = 0.01) -> torch.Tensor:
    """``weight`` x the mean over samples of the squared norm of the gradient of D's output
    (summed over scales and patches) with respect to the real image (Mescheder et al. 2018).

    Computed in float32 with autocast off: ``torch.autograd.grad`` is not scaled by a loss
    scaler, so under fp16 the gradient would under- or overflow. ``create_graph=True`` lets
    the penalty train D.
    """
    with torch.autocast(real.device.type, enabled=False):
        x = real.detach().float().requires_grad_(True)
        score = sum(out.sum() for out in discriminator(x))
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
    return weight * grad.pow(2).flatten(1).sum(1).mean()


def domain_adversarial_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """LSGAN on the domain discriminator's scores, summed over the batch:
    ``sum((score - target)^2)`` (source 0, target 1; the generator side pushes target
    features to 0)."""
    return ((scores.float() - target) ** 2).sum()


def teacher_kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """DG-Net's teacher loss: ``KL(q_teacher || p_student)`` averaged over the batch, where
    the teacher's distribution over the ``C_s`` source ids is zero-padded to the student's
    ``C_s + K`` classes (source ids first, then the target clusters; 0 log 0 = 0).

    Args:
        student_logits: ``(N, C_s + K)`` logits of the student's head on the generated image.
        teacher_probs: ``(N, C_s)`` the teacher's (flip-averaged) softmax.
    """
    extra = student_logits.shape[1] - teacher_probs.shape[1]
    if extra < 0:
        raise ValueError(f"the student has {student_logits.shape[1]} classes, fewer than the "
                         f"teacher's {teacher_probs.shape[1]}")
    target = torch.nn.functional.pad(teacher_probs.float(), (0, extra))
    log_student = torch.log_softmax(student_logits.float(), dim=1)
    return torch.nn.functional.kl_div(log_student, target, reduction="batchmean")
