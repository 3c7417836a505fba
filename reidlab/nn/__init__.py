"""Network building blocks: backbones, AIBN, pooling, heads, attention, memory."""

from reidlab.nn.aibn import AIBN, aibn_alphas, convert_to_aibn
from reidlab.nn.arn import (
    ConvLatentEncoder,
    LatentDecoder,
    StageLatentEncoder,
    split_last_stage,
    stage_out_channels,
)
from reidlab.nn.attention import ChannelAttention, DomainClassifier
from reidlab.nn.backbones import ResNetBackbone, load_weights
from reidlab.nn.heads import BNNeck, GeneralizedMeanPooling, build_pooling
from reidlab.nn.memory import MemoryBank

__all__ = [
    "AIBN",
    "BNNeck",
    "ChannelAttention",
    "ConvLatentEncoder",
    "DomainClassifier",
    "GeneralizedMeanPooling",
    "LatentDecoder",
    "MemoryBank",
    "ResNetBackbone",
    "StageLatentEncoder",
    "aibn_alphas",
    "build_pooling",
    "convert_to_aibn",
    "load_weights",
    "split_last_stage",
    "stage_out_channels",
]
