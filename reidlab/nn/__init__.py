"""Network building blocks: backbones, pooling, heads, attention, memory."""

from reidlab.nn.attention import ChannelAttention, DomainClassifier
from reidlab.nn.backbones import ResNetBackbone, load_weights
from reidlab.nn.heads import BNNeck, GeneralizedMeanPooling, build_pooling
from reidlab.nn.memory import MemoryBank

__all__ = [
    "BNNeck",
    "ChannelAttention",
    "DomainClassifier",
    "GeneralizedMeanPooling",
    "MemoryBank",
    "ResNetBackbone",
    "build_pooling",
    "load_weights",
]
