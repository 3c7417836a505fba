"""LightningDataModules, samplers and transforms."""

from reidlab.datamodules.cross_domain import CrossDomainDataModule
from reidlab.datamodules.folder import ImageFolderDataModule
from reidlab.datamodules.reid import ReIDDataModule
from reidlab.datamodules.samplers import (
    CameraAwarePKBatchSampler,
    DomainPairBatchSampler,
    PerCameraBatchSampler,
    PKBatchSampler,
    RandomBatchSampler,
    ShardSampler,
)
from reidlab.datamodules.transforms import build_transforms

__all__ = [
    "CameraAwarePKBatchSampler", "CrossDomainDataModule", "DomainPairBatchSampler",
    "ImageFolderDataModule", "PKBatchSampler",
    "PerCameraBatchSampler", "RandomBatchSampler", "ReIDDataModule", "ShardSampler",
    "build_transforms",
]
