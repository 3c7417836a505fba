"""The single-domain (supervised) re-ID DataModule and the loader machinery it shares
with the cross-domain one."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from reidlab.datamodules.loader import TrainDataLoader, data_loader
from reidlab.datamodules.samplers import (
    CameraAwarePKBatchSampler,
    DomainPairBatchSampler,
    PKBatchSampler,
    RandomBatchSampler,
    ShardSampler,
)
from reidlab.datamodules.transforms import build_transforms
from reidlab.datasets import Record, ReIDDataset, ReIDImageDataset, build_dataset
from reidlab.datasets.base import DatasetFormatError
from reidlab.datasets.image_dataset import PositivePairDataset, find_bad_images

TRAIN_SAMPLERS = ("pk", "camera_pk", "random")


class ReIDDataModuleBase(pl.LightningDataModule):
    """Transforms, samplers and loaders shared by the re-ID DataModules.

    Subclasses define :attr:`eval_data` (evaluated by validation / test / predict) and
    ``train_dataloader``. Evaluation iterates over ``query + gallery`` in that order:
    sample indices refer to :attr:`eval_records` and the first :attr:`num_query` are
    queries. Samplers split work across ranks themselves: train with
    ``Trainer(use_distributed_sampler=False)``.
    """

    def __init__(self, height: int, width: int, flip_p: float, padding: int,
                 erasing_p: float, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.train_transform = build_transforms(height, width, train=True, flip_p=flip_p,
                                                padding=padding, erasing_p=erasing_p,
                                                interpolation=interpolation)
        self.test_transform = build_transforms(height, width, train=False,
                                               interpolation=interpolation)

    @staticmethod
    def build(name: str, root: str | None, kwargs: dict[str, Any] | None) -> ReIDDataset:
        return build_dataset(name, root, **(kwargs or {}))

    @staticmethod
    def verify(name: str, data: ReIDDataset, verify_images: bool | None) -> None:
        """Decode every image of ``data`` once (``verify_images``; None: real datasets
        only, the synthetic ones are written by reidlab) and list every bad file at once.

        Raises:
            DatasetFormatError: naming each missing, empty, truncated or non-image file.
        """
        if verify_images is False or (verify_images is None and name.startswith("synthetic")):
            return
        paths = sorted({r.path for r in data.train + data.query + data.gallery})
        bad = find_bad_images(paths, desc=f"checking {name} images")
        if bad:
            listing = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DatasetFormatError(
                f"{len(bad)} of the {len(paths)} images of {name} cannot be read:\n{listing}"
                f"{more}\n(replace or remove them; verify_images=false skips this check)")

    @property
    def eval_data(self) -> ReIDDataset:
        raise NotImplementedError

    @property
    def eval_records(self) -> list[Record]:
        return self.eval_data.query + self.eval_data.gallery

    @property
    def num_query(self) -> int:
        return len(self.eval_data.query)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        """A training loader (``batch_sampler`` is one of the rank-aware samplers)."""
        self._continue_interrupted_epoch(batch_sampler)
        return data_loader(dataset, batch_sampler=batch_sampler, loader=TrainDataLoader,
                           num_workers=self.hparams.num_workers, rank=self._world()[1])

    def _train_sampler(self, records: Sequence[Record], pids: Sequence[int], kind: str,
                       num_ids: int, num_instances: int, seed: int):
        """A rank-aware identity sampler; ``random`` draws the samples with pid >= 0."""
        world, rank = self._world()
        common = dict(num_batches=self.hparams.iters_per_epoch, seed=seed,
                      num_replicas=world, rank=rank)
        if kind == "random":
            return RandomBatchSampler(np.flatnonzero(np.asarray(pids) >= 0),
                                      num_ids * num_instances, **common)
        if kind == "camera_pk":
            return CameraAwarePKBatchSampler(pids, [r.camid for r in records], num_ids=num_ids,
                                             num_instances=num_instances, **common)
        return PKBatchSampler(pids, num_ids=num_ids, num_instances=num_instances, **common)

    def _continue_interrupted_epoch(self, sampler) -> None:
        """Start ``sampler`` at the fit's current epoch and, when the fit resumes from a
        checkpoint saved inside an epoch (:class:`~reidlab.callbacks.InterruptCheckpoint`),
        after the batches of that epoch already trained, so the resumed run sees the
        batches the uninterrupted one would.

        Lightning creates the loader's iterator (and fetches its first batch) before it
        calls ``set_epoch``, hence the epoch is set here too."""
        trainer = self.trainer
        if trainer is None or getattr(trainer, "fit_loop", None) is None:
            return
        loop = trainer.fit_loop
        epochs = loop.epoch_progress.total
        inside_an_epoch = loop.restarting and epochs.started == epochs.processed + 1
        done = loop.epoch_loop.batch_progress.current.processed if inside_an_epoch else 0
        sampler.resume(trainer.current_epoch, done)

    def labelled_train_dataloader(self, records: Sequence[Record]) -> DataLoader:
        """Training loader over labelled ``records`` with the configured sampler."""
        hp = self.hparams
        sampler = self._train_sampler(records, [r.pid for r in records], hp.sampler,
                                      hp.num_ids, hp.num_instances, hp.seed)
        return self._loader(ReIDImageDataset(records, self.train_transform), sampler)

    def eval_dataloader(self, records: Sequence[Record]) -> DataLoader:
        """Ordered loader with the test transform, sharded across ranks under DDP.

        Every sample is seen once over all ranks (no padding); samples carry their index.
        """
        dataset = ReIDImageDataset(records, self.test_transform)
        world, rank = self._world()
        sampler = ShardSampler(len(dataset), world, rank) if world > 1 else None
        return data_loader(dataset, batch_size=self.hparams.eval_batch_size, sampler=sampler,
                           num_workers=self.hparams.num_workers, rank=rank)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.eval_records)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.eval_records)

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.eval_records)


class ReIDDataModule(ReIDDataModuleBase):
    """One re-ID domain: identity-batched training, query + gallery evaluation.

    Training batches are ``(images, pids, camids, indices)`` with P x K identity sampling,
    or with ``sampler="pairs"`` (DG-Net) ``(images, pids, camids, indices, domains,
    positive_images)``: ``2 x pair_batch_size`` random images, each with a random other image
    of its identity (:class:`~reidlab.datamodules.DomainPairBatchSampler` on one domain).

    Args:
        dataset: a registered name (``market1501``, ``dukemtmcreid``, ``msmt17``,
            ``cuhk03np``, ``custom``) or ``synthetic:<domain>``.
        root: the dataset's top folder or its parent (synthetic: cache folder, optional).
        dataset_kwargs: extra parser arguments (``variant``, ``combine_val``, synthetic sizes).
        height: image height.
        width: image width.
        num_ids: P, identities per training batch (per device).
        num_instances: K, images per identity.
        sampler: ``pk``, ``camera_pk`` (companions from other cameras), ``random`` or
            ``pairs``.
        pair_batch_size: images per side of a ``pairs`` batch (DG-Net: 8).
        iters_per_epoch: training batches per device and epoch (default: one pass).
        eval_batch_size: batch size of evaluation loaders.
        num_workers: loader worker processes.
        seed: sampler seed, shared by all ranks.
        flip_p: train-time horizontal flip probability.
        padding: train-time padding before the random crop.
        erasing_p: train-time random erasing probability.
        interpolation: resize filter, ``bilinear`` or ``bicubic`` (IS-GAN's recipe).
        verify_images: decode every image once in ``prepare_data`` and list the bad files
            (None: for real datasets, not for synthetic ones).
    """

    def __init__(
        self,
        dataset: str = "synthetic:mall",
        root: str | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
        height: int = 256,
        width: int = 128,
        num_ids: int = 16,
        num_instances: int = 4,
        sampler: str = "pk",
        pair_batch_size: int = 8,
        iters_per_epoch: int | None = None,
        eval_batch_size: int = 128,
        num_workers: int = 4,
        seed: int = 0,
        flip_p: float = 0.5,
        padding: int = 10,
        erasing_p: float = 0.5,
        interpolation: str = "bilinear",
        verify_images: bool | None = None,
    ) -> None:
        if sampler not in (*TRAIN_SAMPLERS, "pairs"):
            raise ValueError(f"sampler must be one of {(*TRAIN_SAMPLERS, 'pairs')}, "
                             f"got {sampler!r}")
        super().__init__(height, width, flip_p, padding, erasing_p, interpolation)
        self.save_hyperparameters()

    @cached_property
    def data(self) -> ReIDDataset:
        """The parsed dataset (synthetic data is generated on first access)."""
        return self.build(self.hparams.dataset, self.hparams.root, self.hparams.dataset_kwargs)

    @property
    def eval_data(self) -> ReIDDataset:
        return self.data

    @property
    def num_classes(self) -> int:
        """Training identities (size of a classifier)."""
        return self.data.num_train_pids

    def prepare_data(self) -> None:
        """Parse (generate synthetic data) and check the images, once per node."""
        hp = self.hparams
        self.verify(hp.dataset, self.data, hp.verify_images)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if hp.sampler != "pairs":
            return self.labelled_train_dataloader(self.data.train)
        records = self.data.train
        world, rank = self._world()
        sampler = DomainPairBatchSampler([r.pid for r in records], [], hp.pair_batch_size,
                                         (1, 0, 0, 0), num_batches=hp.iters_per_epoch,
                                         seed=hp.seed, num_replicas=world, rank=rank)
        dataset = PositivePairDataset([ReIDImageDataset(records, self.train_transform)])
        return self._loader(dataset, sampler)
