"""Network building blocks: backbones, AIBN, pooling, heads, part branches, attention,
memory, GAN blocks."""

from reidlab.nn.aibn import AIBN, aibn_alphas, convert_to_aibn
from reidlab.nn.arn import ConvLatentEncoder, LatentDecoder, StageLatentEncoder
from reidlab.nn.attention import ChannelAttention, DomainClassifier
from reidlab.nn.backbones import (
    BACKBONES,
    Backbone,
    MobileNetV2Backbone,
    ResNetBackbone,
    build_backbone,
    stage_out_channels,
)
from reidlab.nn.batchnorm import (
    DomainBatchNorm,
    bn_domain,
    convert_to_domain_bn,
    reestimate_bn_statistics,
)
from reidlab.nn.heads import BNNeck, GeneralizedMeanPooling, build_pooling
from reidlab.nn.isgan import Discriminator, Generator, IdentityEncoder, UnrelatedEncoder
from reidlab.nn.memory import MemoryBank
from reidlab.nn.parts import PartBranches, split_backbone
from reidlab.nn.weights import LOCAL_WEIGHTS, load_weights

__all__ = [
    "AIBN",
    "BACKBONES",
    "Backbone",
    "LOCAL_WEIGHTS",
    "MobileNetV2Backbone",
    "BNNeck",
    "ChannelAttention",
    "ConvLatentEncoder",
    "DomainBatchNorm",
    "Discriminator",
    "DomainClassifier",
    "GeneralizedMeanPooling",
    "Generator",
    "IdentityEncoder",
    "LatentDecoder",
    "MemoryBank",
    "PartBranches",
    "ResNetBackbone",
    "StageLatentEncoder",
    "UnrelatedEncoder",
    "aibn_alphas",
    "bn_domain",
    "build_backbone",
    "build_pooling",
    "convert_to_aibn",
    "convert_to_domain_bn",
    "load_weights",
    "reestimate_bn_statistics",
    "split_backbone",
    "stage_out_channels",
]
