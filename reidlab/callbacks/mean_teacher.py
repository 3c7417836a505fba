"""MeanTeacher: the teacher is an exponential moving average of the student."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

BUFFER_MODES = ("copy", "own")


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, alpha: float,
                    buffers: str = "copy") -> None:
    """``teacher <- alpha * teacher + (1 - alpha) * student`` over the parameters.

    Buffers (BatchNorm statistics): ``"copy"`` copies the student's, ``"own"`` leaves the
    teacher's to its own forward passes in train mode.
    """
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - alpha)  # t + (1 - alpha) (s - t)
    if buffers == "copy":
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)


class MeanTeacher(pl.Callback):
    """Mean teacher (Tarvainen & Valpola, NeurIPS 2017): after every training batch, i.e.
    after its optimizer step(s), ``teacher <- EMA(student)``.

    The module exposes ``student`` and ``teacher``, two modules of the same structure; the
    teacher must not be in any optimizer (checked at fit start) and gets
    ``requires_grad=False``, so it receives no gradients and no DDP gradient sync. Under DDP
    copied BatchNorm statistics are taken from rank 0, so every rank holds the same teacher. With
    manual optimization the update runs once per batch, after the module's own steps.

    The rate follows the warm-up form ``alpha_t = min(1 - 1 / (t + 1), alpha)`` with ``t``
    the trainer's ``global_step`` after the step (so ``alpha_1 = 0.5``); ``t`` is restored
    with a checkpoint, so a resumed run continues the same schedule.

    Args:
        alpha: EMA momentum (0.999 in SBase / MMT).
        warmup: use the warm-up form; False gives a constant ``alpha``.
        buffers: ``"copy"`` (default): BatchNorm running statistics are copied from the
            student at every update, for teachers that only run in eval mode (SBase);
            ``"own"``: left to the teacher's own forward passes in train mode.
    """

    def __init__(self, alpha: float = 0.999, warmup: bool = True, buffers: str = "copy") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        self.alpha, self.warmup, self.buffers = alpha, warmup, buffers

    def momentum(self, step: int) -> float:
        """``alpha_t`` after ``step`` optimizer steps."""
        return min(1.0 - 1.0 / (step + 1), self.alpha) if self.warmup else self.alpha

    @staticmethod
    def _pair(pl_module: pl.LightningModule) -> tuple[nn.Module, nn.Module]:
        student, teacher = getattr(pl_module, "student", None), getattr(pl_module, "teacher", None)
        if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
            raise AttributeError(f"MeanTeacher needs {type(pl_module).__name__}.student and "
                                 ".teacher modules (was the mean teacher switched off?)")
        return student, teacher

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _, teacher = self._pair(pl_module)
        teacher.requires_grad_(False)
        teacher_ids = {id(p) for p in teacher.parameters()}
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                if any(id(p) in teacher_ids for p in group["params"]):
                    raise ValueError("a teacher parameter is in an optimizer: optimise the "
                                     "student's parameters only")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        student, teacher = self._pair(pl_module)
        update_momentum(student, teacher, self.momentum(trainer.global_step), self.buffers)
        if self.buffers == "copy" and trainer.world_size > 1:
            _broadcast_float_buffers(teacher)


@torch.no_grad()
def _broadcast_float_buffers(module: nn.Module) -> None:
    """Rank 0's floating-point buffers to every rank (one coalesced broadcast).

    Under DDP each rank's student BatchNorm statistics move with its own batch after DDP's
    start-of-forward broadcast, so copied teacher statistics would differ across ranks.
    """
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    torch.distributed.broadcast(flat, src=0)
    torch._foreach_copy_(buffers, [f.view_as(b) for f, b in
                                   zip(flat.split([b.numel() for b in buffers]), buffers,
                                       strict=True)])
