"""Adaptive Instance and Batch Normalization (AIBN; Xuan & Zhang, "Intra-Inter Camera
Similarity for Unsupervised Person Re-Identification", CVPR 2021, Sec. 3.4, eq. 12)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from reidlab.nn.backbones import Backbone

ALPHA_SHARING = ("block", "layer", "none")


class _InstanceStatistics(torch.autograd.Function):
    """Each sample's per-channel mean and biased variance over H x W, ``(N, C)`` each,
    with the closed-form gradient ``dx = (g_mu + 2 g_var (x - mu)) / (H W)``.

    The same numbers as ``x.mean((2, 3))`` and ``x.var((2, 3), unbiased=False)``, faster on
    CPU, where ``torch.var`` over the small maps of a network's last stages is 10-50x
    slower than two means, and autograd through the two-pass formula adds a broadcast
    division and accumulation per layer (``benchmarks/aibn_speed.py``). Two passes (centre,
    then square) keep the variance free of cancellation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, var = instance_statistics(x)  # autograd is off inside forward: the plain path
        ctx.save_for_backward(x, mu)
        return mu, var

    @staticmethod
    @once_differentiable  # a second derivative (e.g. an R1 penalty) raises, never wrong
    def backward(ctx, grad_mu: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:
        # (unused outputs get zero gradients: autograd materialises them by default)
        x, mu = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]
        return torch.addcmul((grad_mu / hw)[..., None, None], x - mu[..., None, None],
                             (grad_var * (2 / hw))[..., None, None])


def instance_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and biased variance over H x W of ``(N, C, H, W)``:
    through :class:`_InstanceStatistics` when a gradient is needed, else as plain tensor
    operations (the same arithmetic), which TorchScript tracing and ONNX export can record."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _InstanceStatistics.apply(x)
    mu = x.mean((2, 3))
    return mu, (x - mu[..., None, None]).square().mean((2, 3))


class AIBN(nn.BatchNorm2d):
    """Normalisation with a learnt mixture of batch and instance statistics (eq. 12):

        x_hat = gamma * (x - (w mu_bn + (1 - w) mu_in)) / sqrt(w var_bn + (1 - w) var_in + eps)
                + beta,        w = clamp(alpha, 0, 1)

    ``mu_in, var_in`` are each sample's statistics over H x W (always computed). In
    training ``mu_bn`` is the batch mean of ``mu_in`` and ``var_bn = mean(var_in + mu_in^2)
    - mu_bn^2`` (the variance of the whole batch), and the running statistics are updated as
    in BatchNorm (momentum, unbiased running variance); in eval mode the running statistics
    take their place. ``alpha`` is clamped only in the forward pass, the parameter itself is
    unconstrained (paper Sec. 3.4). ``alpha = 1`` is BatchNorm, ``alpha = 0`` is
    InstanceNorm with affine parameters.

    A subclass of ``nn.BatchNorm2d``, so a BatchNorm state dict (ImageNet weights, running
    statistics) loads into it unchanged; the extra ``alpha`` may be a parameter shared with
    other AIBN layers (see :func:`convert_to_aibn`).

    Args:
        num_features: channels.
        alpha: a shared parameter (shape ``()``) or None for an own one initialised to
            ``alpha_init``.
        alpha_init: initial mixture weight (0.5 in the paper; the authors' code uses 0.1).
        unbiased: use the unbiased (H*W - 1) instance variance, as the authors' code does;
            the default is the biased variance of eq. 12's IN/BN, which makes ``alpha = 1``
            exactly BatchNorm and ``alpha = 0`` exactly InstanceNorm.
        eps, momentum: as in BatchNorm.
    """

    def __init__(self, num_features: int, alpha: nn.Parameter | None = None,
                 alpha_init: float = 0.5, unbiased: bool = False, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.alpha = alpha if alpha is not None else nn.Parameter(torch.tensor(float(alpha_init)))
        self.unbiased = unbiased

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"AIBN expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        # statistics in (at least) float32, also under mixed precision
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mu_in, var_in = instance_statistics(xf)                 # (N, C) each, biased
        if self.unbiased and h * w > 1:
            var_in = var_in * (h * w / (h * w - 1))
        if self.training:
            # mean(var_in + mu_in^2) - mu_bn^2, written as the law of total variance to
            # avoid the cancellation of E[x^2] - E[x]^2
            mu_bn = mu_in.mean(0)                               # (C,)
            var_bn = var_in.mean(0) + (mu_in - mu_bn).square().mean(0)
            with torch.no_grad():
                count = n * h * w
                self.running_mean.lerp_(mu_bn.detach(), self.momentum)
                self.running_var.lerp_(var_bn.detach() * count / max(count - 1, 1),
                                       self.momentum)
                self.num_batches_tracked.add_(1)
        else:
            mu_bn, var_bn = self.running_mean, self.running_var
        weight = self.alpha.clamp(0, 1)
        mean = weight * mu_bn + (1 - weight) * mu_in            # (N, C)
        var = weight * var_bn + (1 - weight) * var_in
        scale = self.weight * torch.rsqrt(var + self.eps)       # (N, C)
        shift = self.bias - mean * scale
        out = torch.addcmul(shift[..., None, None], xf, scale[..., None, None])
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, unbiased={self.unbiased}"


def _to_aibn(bn: nn.BatchNorm2d, alpha: nn.Parameter, unbiased: bool) -> AIBN:
    layer = AIBN(bn.num_features, alpha=alpha, unbiased=unbiased, eps=bn.eps,
                 momentum=bn.momentum if bn.momentum is not None else 0.1)
    layer.to(device=bn.weight.device, dtype=bn.weight.dtype)
    layer.load_state_dict(bn.state_dict(), strict=False)  # affine + running statistics
    return layer


def convert_to_aibn(
    backbone: nn.Module,
    layers: Sequence[str] = ("layer3", "layer4"),
    alpha_init: float = 0.5,
    sharing: str = "block",
    learn_alpha: bool = True,
    unbiased: bool = False,
) -> list[nn.Parameter]:
    """Replace every BatchNorm2d of the named ResNet stages by :class:`AIBN`, in place.

    Affine weights and running statistics (e.g. ImageNet's) are carried over, so at
    ``alpha = 1`` in eval mode the converted network computes exactly what it did.

    Args:
        backbone: a :class:`~reidlab.nn.Backbone` (ResNet, MobileNetV2), or a module
            with the stages as attributes (torchvision ResNet).
        layers: stage names (paper default layer3 + layer4; Table 4 compares others).
        alpha_init: initial mixture weight.
        sharing: ``block``: one alpha per residual block (bottleneck), shared by its BNs
            and its downsample BN (paper default); ``layer``: one per stage; ``none``: one
            per AIBN (paper Table 4).
        learn_alpha: False keeps alpha fixed (paper Table 2, "AIBN (fixed)"; with
            ``alpha_init=0`` it is InstanceNorm, the "+ IN" row).
        unbiased: see :class:`AIBN`.

    Returns:
        The alpha parameters created (one per sharing group).
    """
    if sharing not in ALPHA_SHARING:
        raise ValueError(f"sharing must be one of {ALPHA_SHARING}, got {sharing!r}")
    alphas: list[nn.Parameter] = []

    def new_alpha() -> nn.Parameter:
        alphas.append(nn.Parameter(torch.tensor(float(alpha_init)), requires_grad=learn_alpha))
        return alphas[-1]

    for name in layers:
        stage = (backbone.stage(name) if isinstance(backbone, Backbone)
                 else getattr(backbone, name, None))
        if stage is None:
            raise ValueError(f"the backbone has no stage {name!r} to convert to AIBN")
        stage_alpha = new_alpha() if sharing == "layer" else None
        for block in stage.children():
            block_alpha = new_alpha() if sharing == "block" else stage_alpha
            for parent in list(block.modules()):
                for child_name, child in parent.named_children():
                    if type(child) is nn.BatchNorm2d:
                        alpha = block_alpha if block_alpha is not None else new_alpha()
                        setattr(parent, child_name, _to_aibn(child, alpha, unbiased))
    if not alphas or not any(isinstance(m, AIBN) for m in backbone.modules()):
        raise ValueError(f"no BatchNorm2d found in {list(layers)}")
    return alphas


def aibn_alphas(module: nn.Module) -> torch.Tensor:
    """The distinct clamped mixture weights of a network's AIBN layers (for logging)."""
    seen: dict[int, torch.Tensor] = {}
    for m in module.modules():
        if isinstance(m, AIBN):
            seen.setdefault(id(m.alpha), m.alpha.detach().clamp(0, 1))
    return torch.stack(list(seen.values())) if seen else torch.zeros(0)
