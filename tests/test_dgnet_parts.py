"""DG-Net / DG-Net++ building blocks against hand computations and closed forms."""

import pytest
import torch
import torch.nn.functional as F

from reidlab.losses.dgnet import (
    domain_adversarial_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    r1_penalty,
)
from reidlab.nn import build_backbone
from reidlab.nn.dgnet import (
    ASPP,
    AppearanceEncoder,
    Decoder,
    DomainDiscriminator,
    ImageDiscriminator,
    LayerNorm,
    StructureEncoder,
    adaptive_instance_norm,
)


def test_layer_norm_is_per_sample_unbiased_and_float32_under_bf16():
    torch.manual_seed(0)
    norm = LayerNorm(3)
    x = torch.randn(2, 3, 4, 5) * 3 + 1
    ref = []
    for sample in x:
        mean, std = sample.mean(), sample.flatten().std(unbiased=True)
        ref.append((sample - mean) / (std + 1e-5) * norm.gamma[:, None, None]
                   + norm.beta[:, None, None])
    torch.testing.assert_close(norm(x), torch.stack(ref))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, norm(x.bfloat16().float()))
    # statistics are per sample: changing sample 1 leaves sample 0 alone
    other = x.clone()
    other[1] *= 10
    torch.testing.assert_close(norm(other)[0], norm(x)[0])


def test_adain_normalises_each_instance_then_applies_scale_and_bias():
    torch.manual_seed(0)
    x, scale, bias = torch.randn(2, 3, 4, 4), torch.randn(2, 3), torch.randn(2, 3)
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-5) * scale[:, :, None, None] + bias[:, :, None, None]
    torch.testing.assert_close(adaptive_instance_norm(x, scale, bias), ref)


def test_aspp_concatenates_a_1x1_and_dilated_3x3_branches():
    torch.manual_seed(0)
    aspp = ASPP(8, 16, dilations=(3, 6, 9))
    x = torch.randn(1, 8, 20, 12)
    out = aspp(x)
    assert out.shape == (1, 16, 20, 12)
    branch = aspp.branches[2]  # dilation 6
    ref = F.conv2d(x, branch.weight, branch.bias, padding=6, dilation=6)
    torch.testing.assert_close(out[:, 8:12], ref)
    with pytest.raises(ValueError, match="branches"):
        ASPP(8, 10)


@pytest.mark.parametrize("size", [(256, 128), (64, 32)])
def test_structure_encoder_reads_the_channel_mean_at_a_quarter_resolution(size):
    torch.manual_seed(0)
    enc = StructureEncoder()
    x = torch.randn(2, 3, *size)
    out = enc(x)
    assert out.shape == (2, 128, size[0] // 4, size[1] // 4)
    grey = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # same channel mean, other colours
    torch.testing.assert_close(enc(grey), out)


def test_decoder_maps_codes_to_images_and_each_block_reads_its_slice():
    torch.manual_seed(0)
    dec = Decoder(appearance_dim=64, code_channels=8, blocks=4, mlp_hidden=16,
                  up_channels=(8, 4))
    structure, appearance = torch.randn(2, 8, 16, 8), torch.randn(2, 64)
    out = dec(structure, appearance)
    assert out.shape == (2, 3, 64, 32)
    # the first block's AdaIN parameters depend on the first 16 dims only
    appearance.requires_grad_(True)
    scale = dec.scales[0](appearance.chunk(4, dim=1)[0])
    (grad,) = torch.autograd.grad(scale.sum(), appearance)
    assert grad[:, :16].abs().sum() > 0 and grad[:, 16:].abs().sum() == 0
    changed = appearance.detach().clone()
    changed[:, 48:] += 1  # the last slice drives the last block
    assert not torch.allclose(dec(structure, changed), out)


def test_image_discriminator_gives_one_patch_map_per_scale():
    d = ImageDiscriminator(scales=3, width=8, blocks=1)
    maps = d(torch.randn(2, 3, 64, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 1, 16, 8), (2, 1, 8, 4), (2, 1, 4, 2)]
    assert DomainDiscriminator(32, (16, 8))(torch.randn(4, 32)).shape == (4,)


def test_lsgan_losses_by_hand():
    real, fake = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])], [torch.tensor([0.5]),
                                                                     torch.tensor([-1.0, 1.0])]
    # scale 1: mean((1-1)^2, (0-1)^2) = 0.5 + 0.25; scale 2: 1 + mean(1, 1) = 2
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(0.75 + 2.0)
    # 2 * (0.25 + mean(4, 0)) = 2 * 2.25
    assert lsgan_generator_loss(fake).item() == pytest.approx(4.5)
    assert domain_adversarial_loss(torch.tensor([0.5, 1.0]), 1.0).item() == pytest.approx(0.25)


def test_r1_penalty_matches_its_closed_form_in_float32_under_bf16():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 4, 4)

    def quadratic(images):  # two "scales": sum(x^2) per sample and sum(0.5 x) patches
        return [images.pow(2).sum(dim=(1, 2, 3)), 0.5 * images]

    # d/dx = 2x + 0.5 -> per-sample sum of squares, mean over samples, times the weight
    expected = 0.01 * (2 * x + 0.5).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1_penalty(quadratic, x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = r1_penalty(quadratic, x)
    assert under_amp.dtype == torch.float32
    torch.testing.assert_close(under_amp, expected)
    # the penalty trains D: it has a gradient with respect to D's parameters
    d = ImageDiscriminator(scales=1, width=4, blocks=0)
    penalty = r1_penalty(d, torch.randn(2, 3, 16, 8))
    grads = torch.autograd.grad(penalty, list(d.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_appearance_encoder_codes_are_channel_major_part_max_pools():
    torch.manual_seed(0)
    net = build_backbone("resnet18", None, last_stride=1, width=0.25)
    enc = AppearanceEncoder(net, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 32)
    out = enc(x)
    fmap = net(x)
    channels = net.out_channels
    assert out["code"].shape == (2, 4 * channels) and enc.code_dim == 4 * channels
    # entry c * 4 + p is channel c's max over stripe p
    torch.testing.assert_close(out["code"][:, 1 * 4 + 2], fmap[:, 1, 2:3].amax(dim=(1, 2)))
    torch.testing.assert_close(out["global"], fmap.amax(dim=(2, 3)))
    for head in ("primary", "fine"):
        feature, logits = out[head]
        assert feature.shape == (2, 512) and logits.shape == (2, 5)
    kept = enc.primary.bottleneck[0].weight.clone()
    enc.primary.classifier = enc.primary.new_classifier(9)  # a round's new capacity
    assert enc(x)["primary"][1].shape == (2, 9)
    assert torch.equal(enc.primary.bottleneck[0].weight, kept)


def test_teacher_kl_pads_the_teacher_over_the_target_classes():
    from reidlab.losses.dgnet import teacher_kl_loss

    student = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.75, 0.25], [1.0, 0.0]])
    log_p = torch.log_softmax(student, dim=1)
    by_hand = (0.75 * (torch.log(torch.tensor(0.75)) - log_p[0, 0])
               + 0.25 * (torch.log(torch.tensor(0.25)) - log_p[0, 1])
               + 1.0 * (0.0 - log_p[1, 0])) / 2
    torch.testing.assert_close(teacher_kl_loss(student, teacher), by_hand)
    with pytest.raises(ValueError, match="fewer"):
        teacher_kl_loss(student[:, :1], teacher)
