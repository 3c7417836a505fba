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

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


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
    """

    def __init__(self, name: str = "resnet50", weights: str | None = "imagenet",
                 last_stride: int = 1) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown backbone {name!r}; known: {', '.join(RESNETS)}")
        net = models.get_model(name, weights=None)
        load_weights(net, name, weights)
        block = net.layer4[0]
        strided = block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1
        strided.stride = (last_stride, last_stride)
        if block.downsample is not None:
            block.downsample[0].stride = (last_stride, last_stride)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = RESNETS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
