"""Network building blocks: backbones, pooling, heads."""

from reidlab.nn.backbones import ResNetBackbone, load_weights
from reidlab.nn.heads import BNNeck, GeneralizedMeanPooling, build_pooling

__all__ = ["BNNeck", "GeneralizedMeanPooling", "ResNetBackbone", "build_pooling", "load_weights"]
