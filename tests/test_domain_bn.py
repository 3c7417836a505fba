"""Domain-specific BatchNorm: per-domain statistics against plain BatchNorms fed one domain
each, evaluation with a domain's statistics, state dicts, the conversion."""

import copy

import pytest
import torch
from torch import nn

from reidlab.nn import (
    DomainBatchNorm,
    bn_domain,
    build_backbone,
    convert_to_domain_bn,
    reestimate_bn_statistics,
)


def _batches(seed: int, shift: float, n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, 3, 2, generator=g) * (1 + shift) + shift for _ in range(n)]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_each_domain_trains_its_own_statistics(momentum):
    reference = nn.BatchNorm2d(4, momentum=momentum)
    nn.init.normal_(reference.weight)
    layer = DomainBatchNorm(copy.deepcopy(reference))
    per_domain = [copy.deepcopy(reference), copy.deepcopy(reference)]
    source, target = _batches(0, 0.0), _batches(1, 2.0)
    for xs, xt in zip(source, target, strict=True):  # alternating, as a UDA step does
        for d, x in ((0, xs), (1, xt)):
            layer.domain = d
            torch.testing.assert_close(layer(x), per_domain[d](x))  # batch statistics
    for d in (0, 1):
        torch.testing.assert_close(layer.running_mean[d], per_domain[d].running_mean)
        torch.testing.assert_close(layer.running_var[d], per_domain[d].running_var)
        assert layer.num_batches_tracked[d] == per_domain[d].num_batches_tracked == 3
    layer.eval()
    per_domain[1].eval()
    x = _batches(2, 1.0, 1)[0]
    layer.domain = 0
    with bn_domain(layer, 1):  # evaluation with the target's statistics
        torch.testing.assert_close(layer(x), per_domain[1](x))
    assert layer.domain == 0  # restored


def test_per_domain_affine_and_state_dict_round_trip():
    layer = DomainBatchNorm(nn.BatchNorm1d(3), per_domain_affine=True)
    assert layer.weight.shape == (2, 3)
    layer.train()
    x = torch.randn(8, 3)
    for d in (0, 1):
        layer.domain = d
        layer(x * (d + 1)).pow(2).sum().backward()
    assert layer.weight.grad[0].abs().sum() > 0 and layer.weight.grad[1].abs().sum() > 0
    assert not torch.equal(layer.running_var[0], layer.running_var[1])
    restored = DomainBatchNorm(nn.BatchNorm1d(3), per_domain_affine=True)
    restored.load_state_dict(layer.state_dict())
    for key, value in layer.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    shared = DomainBatchNorm(nn.BatchNorm1d(3))
    assert shared.weight.shape == (3,)
    with pytest.raises(ValueError, match="domain 2"):
        shared.domain = 2
        shared(x)


def test_converted_network_computes_what_it_did_for_every_domain():
    torch.manual_seed(0)
    net = build_backbone("resnet18", None, width=0.25)
    net.train()
    net(torch.randn(4, 3, 32, 16))  # non-trivial running statistics
    net.eval()
    converted = copy.deepcopy(net)
    n = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert convert_to_domain_bn(converted) == n
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    x = torch.randn(2, 3, 32, 16)
    for d in (0, 1):
        with bn_domain(converted, d), torch.no_grad():
            torch.testing.assert_close(converted(x), net(x))
    params = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in converted.parameters()) == params  # affine shared


def test_reestimating_one_domain_leaves_the_other_and_matches_plain_adabn():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1),
                          nn.BatchNorm2d(5))
    converted = copy.deepcopy(plain)
    convert_to_domain_bn(converted)
    with bn_domain(converted, 0):  # some source statistics first
        converted.train()(torch.randn(8, 3, 6, 6) + 2)
    source_before = [m.running_mean[0].clone() for m in converted.modules()
                     if isinstance(m, DomainBatchNorm)]
    batches = [torch.randn(5, 3, 6, 6) * 2 - 1 for _ in range(3)]
    reestimate_bn_statistics(plain, batches)
    assert reestimate_bn_statistics(converted, batches, domain=1) == 15
    layers = [m for m in converted.modules() if isinstance(m, DomainBatchNorm)]
    for layer, ref, before in zip(layers, [plain[1], plain[4]], source_before, strict=True):
        torch.testing.assert_close(layer.running_mean[1], ref.running_mean)
        torch.testing.assert_close(layer.running_var[1], ref.running_var)
        torch.testing.assert_close(layer.running_mean[0], before)
        assert layer.momentum == 0.1 and layer.domain == 0
