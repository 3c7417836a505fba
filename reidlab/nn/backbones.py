"""ResNet backbones with the re-ID modifications (last stride 1).

Weights are never downloaded at import time: ``weights="imagenet"`` asks torchvision
(which caches the file) when the backbone is built, a path loads a local state dict,
and ``None`` gives random initialisation (tests, CPU toy runs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

RESNETS = {
    "resnet18": (models.resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (models.resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (models.resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (models.resnet.Bottleneck, [3, 4, 23, 3]),
}


class _NarrowResNet(models.ResNet):
    """torchvision's ResNet with every stage's channel count multiplied by ``width``
    (for CPU runs; there are no pretrained weights for it)."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: float) -> None:
        nn.Module.__init__(self)
        self._norm_layer, self.groups, self.base_width, self.dilation = nn.BatchNorm2d, 1, 64, 1
        planes = [max(4, round(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def load_weights(model: nn.Module, name: str, weights: str | None) -> None:
    """Load ImageNet weights by torchvision name or from a local file.

    Args:
        model: the torchvision model.
        name: its torchvision name, e.g. ``resnet50``.
        weights: None, ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``), a torchvision
            weight name such as ``"IMAGENET1K_V2"``, or a path to a state dict
            (``.pth``; a ``{"state_dict": ...}`` checkpoint also works).
    """
    if weights is None:
        return
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".ckpt", ".bin"} or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, _ = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise ValueError(f"weights file {path} lacks {len(missing)} backbone tensors, "
                             f"e.g. {missing[:3]}")
        return
    enum = models.get_model_weights(name)
    tag = "IMAGENET1K_V1" if weights.lower() == "imagenet" else weights
    try:
        model.load_state_dict(enum[tag].get_state_dict(progress=True))
    except KeyError as err:
        known = ", ".join(w.name for w in enum)
        raise ValueError(f"unknown weights {weights!r} for {name}; use 'imagenet', one of "
                         f"{known}, a file path or None") from err


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without pooling and classifier: images -> feature map.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        weights: see :func:`load_weights`.
        last_stride: stride of ``layer4`` (1 doubles the final map, as in BoT).
        width: channel multiplier of every stage (< 1 for cheap CPU runs; needs
            ``weights=None``).
    """

    def __init__(self, name: str = "resnet50", weights: str | None = "imagenet",
                 last_stride: int = 1, width: float = 1.0) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown backbone {name!r}; known: {', '.join(RESNETS)}")
        if width == 1.0:
            net = models.get_model(name, weights=None)
            load_weights(net, name, weights)
        elif weights is not None:
            raise ValueError(f"width={width} has no pretrained weights: use weights=None")
        else:
            net = _NarrowResNet(*RESNETS[name], width=width)
        block = net.layer4[0]
        strided = block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1
        strided.stride = (last_stride, last_stride)
        if block.downsample is not None:
            block.downsample[0].stride = (last_stride, last_stride)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels: int = net.inplanes  # torchvision leaves it at layer4's output width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
