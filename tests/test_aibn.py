"""AIBN (IICS eq. 12): hand computation, clamping, BN / IN limits, ResNet conversion."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidlab.nn import AIBN, ResNetBackbone, aibn_alphas, convert_to_aibn


def _reference(x, alpha, gamma, beta, run_mean, run_var, training, eps=1e-5, unbiased=False):
    """Eq. 12 written out with loops over samples and channels (differentiable: alpha may be
    a tensor that autograd reaches)."""
    n, c = x.shape[:2]
    w = torch.as_tensor(alpha, dtype=x.dtype).clamp(0, 1)
    rows = []
    for i in range(n):
        channels = []
        for j in range(c):
            mus = [x[k, j].mean() for k in range(n)]
            vars_ = [x[k, j].var(unbiased=unbiased) for k in range(n)]
            if training:
                mu_bn = sum(mus) / n
                var_bn = sum(v + m * m for v, m in zip(vars_, mus, strict=True)) / n - mu_bn ** 2
            else:
                mu_bn, var_bn = run_mean[j], run_var[j]
            mu = w * mu_bn + (1 - w) * mus[i]
            var = w * var_bn + (1 - w) * vars_[i]
            channels.append(gamma[j] * (x[i, j] - mu) / torch.sqrt(var + eps) + beta[j])
        rows.append(torch.stack(channels))
    return torch.stack(rows)


def _layer(alpha, channels=3, unbiased=False):
    torch.manual_seed(0)
    layer = AIBN(channels, alpha_init=alpha, unbiased=unbiased).double()
    layer.weight.data.uniform_(0.5, 1.5)
    layer.bias.data.uniform_(-0.5, 0.5)
    layer.running_mean.uniform_(-1, 1)
    layer.running_var.uniform_(0.5, 2)
    return layer


@pytest.mark.parametrize("alpha", [0.3, 0.8])
@pytest.mark.parametrize("unbiased", [False, True])
def test_aibn_matches_hand_computation_in_train_and_eval_mode(alpha, unbiased):
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64) * 2 + 1
    layer = _layer(alpha, unbiased=unbiased)
    args = (alpha, layer.weight.detach(), layer.bias.detach())
    run = (layer.running_mean.clone(), layer.running_var.clone())
    expected_eval = _reference(x, *args, *run, training=False, unbiased=unbiased)
    torch.testing.assert_close(layer.eval()(x), expected_eval)
    expected_train = _reference(x, *args, *run, training=True, unbiased=unbiased)
    torch.testing.assert_close(layer.train()(x), expected_train)


def test_running_statistics_follow_batchnorm():
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    layer = _layer(0.5)
    bn = nn.BatchNorm2d(3).double()
    bn.running_mean.copy_(layer.running_mean)
    bn.running_var.copy_(layer.running_var)
    layer.train()(x)
    bn.train()(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("raw, used", [(-0.7, 0.0), (1.6, 1.0), (0.4, 0.4)])
def test_alpha_is_clamped_in_the_forward_pass_only(raw, used):
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    layer = _layer(raw)
    expected = _layer(used).eval()(x)
    torch.testing.assert_close(layer.eval()(x), expected)
    assert layer.alpha.item() == pytest.approx(raw)  # the parameter itself is unconstrained
    layer(x).sum().backward()
    assert layer.alpha.grad is not None


def test_alpha_one_is_batchnorm_and_alpha_zero_is_instancenorm():
    x = torch.randn(4, 3, 6, 3, dtype=torch.float64) * 3 - 1
    layer = _layer(1.0)
    bn = nn.BatchNorm2d(3).double()
    bn.load_state_dict(layer.state_dict(), strict=False)
    for mode in (True, False):
        torch.testing.assert_close(layer.train(mode)(x), bn.train(mode)(x))
    layer = _layer(0.0)
    inorm = F.instance_norm(x, weight=layer.weight.detach(), bias=layer.bias.detach())
    for mode in (True, False):
        torch.testing.assert_close(layer.train(mode)(x), inorm)


def test_conversion_preserves_a_resnet_in_eval_mode_at_alpha_one():
    net = ResNetBackbone("resnet18", weights=None, width=0.25).double()
    net.train()(torch.randn(8, 3, 64, 32, dtype=torch.float64))  # non-trivial running stats
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 64, 32, dtype=torch.float64)
    expected = net.eval()(x)
    alphas = convert_to_aibn(net, alpha_init=1.0)
    assert len(alphas) == 4  # two BasicBlocks in each of layer3 and layer4
    converted = [m for m in net.modules() if isinstance(m, AIBN)]
    assert len(converted) == 10  # 2 BNs per block + the downsample BN of each stage
    assert not any(type(m) is nn.BatchNorm2d for m in (*net.layer3.modules(),
                                                        *net.layer4.modules()))
    assert any(type(m) is nn.BatchNorm2d for m in net.layer2.modules())
    torch.testing.assert_close(net.eval()(x), expected)
    # one alpha per block, shared by the block's BNs and its downsample BN
    block = net.layer3[0]
    assert block.bn1.alpha is block.bn2.alpha is block.downsample[1].alpha
    assert block.bn1.alpha is not net.layer3[1].bn1.alpha


@pytest.mark.parametrize("sharing, count", [("block", 4), ("layer", 2), ("none", 10)])
def test_alpha_sharing_options_and_fixed_alpha(sharing, count):
    net = ResNetBackbone("resnet18", weights=None, width=0.25)
    alphas = convert_to_aibn(net, sharing=sharing, alpha_init=0.2, learn_alpha=False)
    assert len(alphas) == count == len(aibn_alphas(net))
    assert not any(a.requires_grad for a in alphas)
    assert len({id(p) for p in net.parameters()}) == len(list(net.parameters()))
    with pytest.raises(ValueError, match="sharing"):
        convert_to_aibn(ResNetBackbone("resnet18", weights=None, width=0.25), sharing="all")
    with pytest.raises(ValueError, match="layer9"):
        convert_to_aibn(ResNetBackbone("resnet18", weights=None, width=0.25), ["layer9"])


def test_imagenet_style_state_dict_loads_into_converted_layers():
    net = ResNetBackbone("resnet18", weights=None, width=0.25)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state = {k: (v + 1 if k.endswith("running_mean") else v) for k, v in state.items()}
    net.load_state_dict(state)
    convert_to_aibn(net)
    torch.testing.assert_close(net.layer4[1].bn2.running_mean,
                               state["layer4.1.bn2.running_mean"])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradients_match_the_hand_computation(training, unbiased):
    """AIBN's closed-form instance-statistics backward against autograd through the loop
    reference (x, alpha, gamma, beta), in float64."""
    x = (torch.randn(4, 3, 5, 2, dtype=torch.float64) * 2 + 1).requires_grad_()
    upstream = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    layer = _layer(0.3, unbiased=unbiased).train(training)
    run = (layer.running_mean.clone(), layer.running_var.clone())
    (layer(x) * upstream).sum().backward()
    got = [x.grad, layer.alpha.grad, layer.weight.grad, layer.bias.grad]
    x_ref = x.detach().clone().requires_grad_()
    alpha, gamma, beta = (t.detach().clone().requires_grad_()
                          for t in (layer.alpha, layer.weight, layer.bias))
    (_reference(x_ref, alpha, gamma, beta, *run, training, unbiased=unbiased)
     * upstream).sum().backward()
    for g, ref in zip(got, [x_ref.grad, alpha.grad, gamma.grad, beta.grad], strict=True):
        torch.testing.assert_close(g, ref)


def test_channels_last_input_gives_the_same_output_and_gradient():
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        layer = _layer(0.4, channels=6).train()
        xi = x.clone(memory_format=fmt).requires_grad_()
        out = layer(xi)
        out.square().sum().backward()
        results.append((out.detach().contiguous(), xi.grad.contiguous(), layer.alpha.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_float32_statistics_stay_accurate_for_a_large_mean():
    """Activations far from zero (mean / std = 1000): the batch variance must not lose its
    digits to E[x^2] - E[x]^2 cancellation in float32."""
    x64 = torch.randn(8, 4, 6, 3, dtype=torch.float64) + 1000.0
    layer64 = _layer(0.5, channels=4).train()
    layer32 = _layer(0.5, channels=4).float().train()
    torch.testing.assert_close(layer32(x64.float()).double(), layer64(x64),
                               atol=2e-3, rtol=0)
    torch.testing.assert_close(layer32.running_var.double(), layer64.running_var,
                               atol=0, rtol=1e-3)


def test_a_second_derivative_raises_instead_of_being_wrong():
    layer = _layer(0.5).train()
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward"):
        grad.sum().backward()
