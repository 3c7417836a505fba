"""Backbones behind one stages interface: ResNet (the papers') and MobileNetV2 (CPU).

A backbone maps images to a feature map through a ``stem`` and four named stages,
``layer1`` ... ``layer4`` (for ResNet its own stages; for MobileNetV2 the groups of
inverted-residual blocks at strides 4, 8, 16 and 32, the last one ending with the 1x1
conv to 1280 channels). Methods ask the backbone for what they need, never for
architecture-specific attribute names, in the spirit of timm's ``feature_info``:

* :meth:`Backbone.stage` / :attr:`Backbone.stage_names`: the stages, each an
  ``nn.Sequential`` of blocks (AIBN converts "the last two stages", IS-GAN splits "after
  the first block of stage 3");
* :meth:`Backbone.stage_channels`, :attr:`Backbone.out_channels`,
  :attr:`Backbone.output_stride`;
* :meth:`Backbone.pop_last_stage` (ARN's encoders are copies of the last stage).

``last_stride=1`` is the re-ID modification (BoT): the first block of the last stage does
not downsample, so the output stride is 16 instead of 32.

MobileNetV2 computes in the channels-last memory format (NHWC): its convolution weights
are stored in :attr:`Backbone.memory_format` (so that their gradients have the weights'
strides, as DDP's gradient buckets expect; state-dict keys and shapes do not change) and
:meth:`Backbone.forward` converts its input. The results are those of the default layout
up to float rounding; on CPU, oneDNN's channels-last depthwise convolutions train
MobileNetV2 1.1-1.4x and extract features 1.3x faster at 96 x 48 on one thread (four runs
beside two benchmarks). ResNet keeps the default layout: channels-last trained ResNet-50
at 256 x 128 on CPU at 0.86x (one short run; ``benchmarks/channels_last.py`` measures
both, also on a GPU).

Weights are never downloaded at import time, see :mod:`reidlab.nn.weights`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from reidlab.nn.weights import load_weights

RESNETS = {
    "resnet18": (models.resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (models.resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (models.resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (models.resnet.Bottleneck, [3, 4, 23, 3]),
}
MOBILENETS = ("mobilenet_v2",)
BACKBONES = (*RESNETS, *MOBILENETS)
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


def stage_out_channels(module: nn.Module) -> int:
    """Width of a stage's output: its last convolution's (ResNet blocks end in a conv + norm,
    so do MobileNetV2's blocks and its final 1x1 conv; whatever the norm layers became:
    BatchNorm, AIBN, DomainBatchNorm)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d to read its width from")
    return convs[-1].out_channels


class Backbone(nn.Module):
    """``stem`` then the stages ``layer1`` ... ``layer4``: images -> feature map.

    Subclasses build ``stem`` and the four stages as attributes (so state-dict keys read
    ``layer3.0.conv1.weight``) and set ``output_stride``.
    """

    stage_names: tuple[str, ...] = STAGE_NAMES
    output_stride: int
    memory_format: torch.memory_format = torch.contiguous_format  # weights and input

    def stage(self, name: str) -> nn.Module:
        """The stage ``name`` (an ``nn.Sequential`` of blocks)."""
        if name not in self.stage_names:
            raise ValueError(f"{type(self).__name__} has no stage {name!r}; its stages are "
                             f"{', '.join(self.stage_names)}")
        return getattr(self, name)

    def stage_channels(self, name: str) -> int:
        """Output channels of the stage ``name``."""
        return stage_out_channels(self.stage(name))

    @property
    def out_channels(self) -> int:
        """Channels of the output map (the last stage's)."""
        return self.stage_channels(self.stage_names[-1])

    def pop_last_stage(self) -> nn.Module:
        """Remove the last stage and return it: the backbone then ends one stage earlier,
        with that stage's channels and output stride."""
        name = self.stage_names[-1]
        stage = self.stage(name)
        # a stage downsamples once, in its first block: its largest conv stride
        stride = max(m.stride[0] for m in stage.modules() if isinstance(m, nn.Conv2d))
        self.stage_names = self.stage_names[:-1]
        delattr(self, name)
        self.output_stride //= stride
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.contiguous(memory_format=self.memory_format))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


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


class ResNetBackbone(Backbone):
    """A torchvision ResNet without pooling and classifier.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        weights: see :func:`~reidlab.nn.weights.load_weights`.
        last_stride: stride of ``layer4`` (1 doubles the final map, as in BoT).
        width: channel multiplier of every stage (< 1 for cheap CPU runs; needs
            ``weights=None``).
    """

    def __init__(self, name: str = "resnet50", weights: str | None = "imagenet",
                 last_stride: int = 1, width: float = 1.0) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
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
        self.output_stride = 16 * last_stride


# torchvision's mobilenet_v2().features split by output stride: 2 (stem), 4, 8, 16, 32
_MOBILENET_V2_SPLITS = {"stem": (0, 2), "layer1": (2, 4), "layer2": (4, 7), "layer3": (7, 14),
                        "layer4": (14, 19)}


class MobileNetV2Backbone(Backbone):
    """torchvision's MobileNetV2 ``features`` (no classifier) as stem + four stages.

    Args:
        name: ``mobilenet_v2``.
        weights: see :func:`~reidlab.nn.weights.load_weights`; ``"mobilenet_v2_imagenet"``
            is the ImageNet file that ``python -m reidlab.nn.weights fetch`` caches.
        last_stride: stride of the first block of ``layer4`` (1: output stride 16).
        width: torchvision's ``width_mult`` (ImageNet weights exist for 1.0 only).
    """

    memory_format = torch.channels_last

    def __init__(self, name: str = "mobilenet_v2", weights: str | None = "imagenet",
                 last_stride: int = 1, width: float = 1.0) -> None:
        super().__init__()
        if name not in MOBILENETS:
            raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
        if width != 1.0 and weights is not None:
            raise ValueError(f"width={width} has no pretrained weights: use weights=None")
        net = models.mobilenet_v2(weights=None, width_mult=width)
        load_weights(net, name, weights)
        features = net.features
        for part, (start, stop) in _MOBILENET_V2_SPLITS.items():
            setattr(self, part, nn.Sequential(*features[start:stop]))
        depthwise = self.layer4[0].conv[1][0]  # expand 1x1, depthwise 3x3 (strided), project
        depthwise.stride = (last_stride, last_stride)
        self.output_stride = 16 * last_stride
        self.to(memory_format=self.memory_format)  # weights as their gradients come (DDP)


def build_backbone(name: str = "resnet50", weights: str | None = "imagenet",
                   last_stride: int = 1, width: float = 1.0) -> Backbone:
    """The backbone ``name`` (one of :data:`BACKBONES`)."""
    if name in RESNETS:
        return ResNetBackbone(name, weights, last_stride, width)
    if name in MOBILENETS:
        return MobileNetV2Backbone(name, weights, last_stride, width)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
