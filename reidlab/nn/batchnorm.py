"""BatchNorm across domains: re-estimating statistics on a domain's images (AdaBN) and
keeping one set of statistics per domain (domain-specific BatchNorm)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def reestimate_bn_statistics(module: nn.Module, batches: Iterable[torch.Tensor],
                             forward: Callable[[torch.Tensor], object] | None = None,
                             domain: int | None = None) -> int:
    """Replace the running statistics of every BatchNorm in ``module`` by those of
    ``batches`` (AdaBN: Li et al., "Revisiting Batch Normalization For Practical Domain
    Adaptation", ICLR-W 2017; in re-ID the standard "direct transfer + target BN" reference).

    The statistics are reset, then each BN's running mean and variance become the plain
    average of the per-batch statistics over all batches (``momentum=None``); weights are
    not touched. ``module`` is in train mode during the pass and restored after.

    Args:
        module: the network (or the part of it whose BNs are re-estimated).
        batches: image batches (already on the module's device), e.g. the target's
            training images with the test transform.
        forward: what to call on each batch (default ``module``).
        domain: re-estimate this domain's statistics of every :class:`DomainBatchNorm`
            (under :func:`bn_domain`), leaving the other domains' and plain BNs alone;
            None: the plain BatchNorms.

    Returns:
        The number of images seen.
    """
    kinds = BATCH_NORMS if domain is None else (DomainBatchNorm,)
    norms = [m for m in module.modules() if isinstance(m, kinds)
             and (domain is not None or m.track_running_stats)]
    if not norms:
        what = "BatchNorm with running statistics" if domain is None else "DomainBatchNorm"
        raise ValueError(f"{type(module).__name__} has no {what}")
    momenta = [m.momentum for m in norms]
    was_training = module.training
    seen = 0
    try:
        for m in norms:
            if domain is None:
                m.reset_running_stats()
            else:
                m.reset_domain_statistics(domain)
            m.momentum = None  # cumulative average
        module.train()
        with contextlib.ExitStack() as stack:
            if domain is not None:
                stack.enter_context(bn_domain(module, domain))
            for images in batches:
                (forward or module)(images)
                seen += len(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.train(was_training)
    if seen == 0:
        raise ValueError("no images to re-estimate BatchNorm statistics from")
    return seen


class DomainBatchNorm(nn.Module):
    """A BatchNorm with running statistics per domain (domain-specific BN, "DSBN": Chang et
    al., CVPR 2019; the UDA re-ID methods SpCL / MMT-style pipelines use the same idea).

    The domain of the next forward passes is :attr:`domain` (set for a whole network with
    :func:`bn_domain`). In training each batch is normalised with its own statistics and
    updates only its domain's running statistics; in eval mode the domain's running
    statistics are used. The affine weight and bias are shared by the domains unless
    ``per_domain_affine``.

    Args:
        bn: the BatchNorm it replaces (statistics and affine parameters are copied into
            every domain, so a converted network computes what it did, for every domain).
        num_domains: number of domains (2: source 0, target 1).
        per_domain_affine: one weight and bias per domain as well.
    """

    def __init__(self, bn: nn.BatchNorm1d | nn.BatchNorm2d, num_domains: int = 2,
                 per_domain_affine: bool = False) -> None:
        super().__init__()
        if not bn.track_running_stats:
            raise ValueError("DomainBatchNorm needs a BatchNorm with running statistics")
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.num_domains, self.per_domain_affine = num_domains, per_domain_affine
        self.domain = 0
        self.register_buffer("running_mean", bn.running_mean.detach().repeat(num_domains, 1))
        self.register_buffer("running_var", bn.running_var.detach().repeat(num_domains, 1))
        self.register_buffer("num_batches_tracked",
                             bn.num_batches_tracked.detach().repeat(num_domains))
        if bn.affine:
            def copy(p: nn.Parameter) -> nn.Parameter:
                value = p.detach().repeat(num_domains, 1) if per_domain_affine else p.detach()
                return nn.Parameter(value.clone(), requires_grad=p.requires_grad)

            self.weight, self.bias = copy(bn.weight), copy(bn.bias)
        else:
            self.weight = self.bias = None

    @torch.no_grad()
    def reset_domain_statistics(self, domain: int) -> None:
        """Running mean 0, variance 1 and no batch counted for ``domain``."""
        self.running_mean[domain].zero_()
        self.running_var[domain].fill_(1.0)
        self.num_batches_tracked[domain].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.domain
        if not 0 <= d < self.num_domains:
            raise ValueError(f"domain {d} of a DomainBatchNorm with {self.num_domains} domains")
        weight, bias = self.weight, self.bias
        if self.per_domain_affine and weight is not None:
            weight, bias = weight[d], bias[d]
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked[d] += 1
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked[d])
        # rows of the (D, C) buffers are contiguous views: F.batch_norm updates them in place
        return F.batch_norm(x, self.running_mean[d], self.running_var[d], weight, bias,
                            self.training, momentum or 0.0, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, domains={self.num_domains}, "
                f"per_domain_affine={self.per_domain_affine}")


def convert_to_domain_bn(module: nn.Module, num_domains: int = 2,
                         per_domain_affine: bool = False) -> int:
    """Replace every ``BatchNorm1d`` / ``BatchNorm2d`` of ``module`` by a
    :class:`DomainBatchNorm`, in place; returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) in BATCH_NORMS and child.track_running_stats:
                layer = DomainBatchNorm(child, num_domains, per_domain_affine)
                layer.train(child.training)
                setattr(parent, name, layer.to(child.running_mean.device))
                count += 1
    return count


@contextlib.contextmanager
def bn_domain(module: nn.Module, domain: int) -> Iterator[None]:
    """Within the block, every :class:`DomainBatchNorm` of ``module`` uses ``domain``; the
    previous domains are restored after."""
    layers = [m for m in module.modules() if isinstance(m, DomainBatchNorm)]
    before = [m.domain for m in layers]
    for m in layers:
        m.domain = domain
    try:
        yield
    finally:
        for m, d in zip(layers, before, strict=True):
            m.domain = d
