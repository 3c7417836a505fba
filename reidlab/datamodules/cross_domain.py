"""Labelled source + unlabelled target: the DataModule of every cross-domain method."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader

from reidlab.datamodules.reid import TRAIN_SAMPLERS, ReIDDataModuleBase
from reidlab.datamodules.samplers import DomainPairBatchSampler, PerCameraBatchSampler
from reidlab.datasets import ReIDDataset, ReIDImageDataset
from reidlab.datasets.image_dataset import PositivePairDataset

TARGET_SAMPLERS = (*TRAIN_SAMPLERS, "per_camera")


class CrossDomainDataModule(ReIDDataModuleBase):
    """Source images with their labels + target images with the current pseudo-labels.

    Training batches are dicts ``{"source": (img, pid, camid, idx), "target": (img,
    pseudo_pid, camid, idx)}`` from Lightning's ``CombinedLoader`` in ``max_size_cycle``
    mode (the longer side sets the epoch unless ``iters_per_epoch`` fixes both). ``idx``
    indexes that side's ``train`` list, so features can be matched to samples across
    epochs and ranks.

    The target side never sees the target's true ids. Until :meth:`set_pseudo_labels` is
    called its samples carry pid -1 and come in random batches; afterwards the target
    sampler draws from the labelled samples only, outliers (label -1) excluded.
    Pseudo-labels are part of :meth:`state_dict`, so a resumed run keeps them. Build the
    training loader every epoch (``Trainer(reload_dataloaders_every_n_epochs=1)``) so new
    labels take effect.

    With ``batches="domain_pairs"`` (DG-Net++) every step is one
    :class:`~reidlab.datamodules.DomainPairBatchSampler` batch instead: ``{"pairs": (img,
    pid, camid, idx, domain, positive_img)}``, ``pair_batch_size`` images of side a then as
    many of side b, the batch type drawn with :meth:`set_batch_type_weights` (default
    ``batch_type_weights``); ``idx`` indexes ``source.train + target.train`` and the target
    side carries the pseudo-labels (outliers never drawn).

    With ``source=None`` the module serves the fully unsupervised setting: batches are
    ``{"target": ...}`` only (target images + camera ids). Validation and test run on the
    target's query + gallery.

    Args:
        source: source dataset name (as ``dataset`` of :class:`ReIDDataModule`), or None.
        target: target dataset name.
        source_root: folder of the source dataset (optional for synthetic data).
        target_root: folder of the target dataset (optional for synthetic data).
        source_kwargs: extra parser arguments of the source.
        target_kwargs: extra parser arguments of the target.
        height: image height.
        width: image width.
        num_ids: P of the source side, identities per batch (per device).
        num_instances: K of the source side, images per identity.
        sampler: source sampler, ``pk``, ``camera_pk`` or ``random``.
        target_sampler: ``pk``, ``camera_pk``, ``random`` or ``per_camera`` (IICS
            intra-camera stage; needs no labels).
        target_num_ids: P of the target side (default: ``num_ids``).
        target_num_instances: K of the target side (default: ``num_instances``).
        num_per_camera: images per camera and batch for ``per_camera``.
        batches: ``combined`` (a source and a target batch per step) or ``domain_pairs``.
        pair_batch_size: images per side of a ``domain_pairs`` batch (DG-Net++: 8).
        batch_type_weights: weights of source-source, target-target, source-target and
            target-source ``domain_pairs`` batches (the authors' 45 / 45 / 5 / 5).
        train_target: False gives source-only training batches (``{"source": ...}``), e.g.
            for the direct-transfer Baseline, which never looks at target training images.
        iters_per_epoch: training batches per device and epoch, both sides.
        eval_batch_size: batch size of evaluation loaders.
        num_workers: loader worker processes per loader.
        seed: sampler seed, shared by all ranks.
        flip_p: train-time horizontal flip probability.
        padding: train-time padding before the random crop.
        erasing_p: train-time random erasing probability.
        verify_images: decode every image once in ``prepare_data`` and list the bad files
            (None: for real datasets, not for synthetic ones).
    """

    def __init__(
        self,
        source: str | None = "synthetic:mall",
        target: str = "synthetic:street",
        source_root: str | None = None,
        target_root: str | None = None,
        source_kwargs: dict[str, Any] | None = None,
        target_kwargs: dict[str, Any] | None = None,
        height: int = 256,
        width: int = 128,
        num_ids: int = 16,
        num_instances: int = 4,
        sampler: str = "pk",
        target_sampler: str = "pk",
        target_num_ids: int | None = None,
        target_num_instances: int | None = None,
        num_per_camera: int = 8,
        batches: str = "combined",
        pair_batch_size: int = 8,
        batch_type_weights: tuple[float, float, float, float] = (0.45, 0.45, 0.05, 0.05),
        train_target: bool = True,
        iters_per_epoch: int | None = None,
        eval_batch_size: int = 128,
        num_workers: int = 4,
        seed: int = 0,
        flip_p: float = 0.5,
        padding: int = 10,
        erasing_p: float = 0.5,
        verify_images: bool | None = None,
    ) -> None:
        if sampler not in TRAIN_SAMPLERS:
            raise ValueError(f"sampler must be one of {TRAIN_SAMPLERS}, got {sampler!r}")
        if source is None and not train_target:
            raise ValueError("without a source, the target must be trained on")
        if target_sampler not in TARGET_SAMPLERS:
            raise ValueError(f"target_sampler must be one of {TARGET_SAMPLERS}, "
                             f"got {target_sampler!r}")
        if batches not in ("combined", "domain_pairs"):
            raise ValueError(f"batches must be 'combined' or 'domain_pairs', got {batches!r}")
        if batches == "domain_pairs" and source is None:
            raise ValueError("batches='domain_pairs' needs a source")
        super().__init__(height, width, flip_p, padding, erasing_p)
        self.save_hyperparameters()
        self.pseudo_labels: np.ndarray | None = None
        self.label_sampler: str | None = None
        self.type_weights = tuple(float(w) for w in batch_type_weights)

    # -- data ----------------------------------------------------------------------------
    @cached_property
    def source_data(self) -> ReIDDataset | None:
        """The labelled source dataset (None in the unsupervised setting)."""
        hp = self.hparams
        return self.build(hp.source, hp.source_root, hp.source_kwargs) if hp.source else None

    @cached_property
    def target_data(self) -> ReIDDataset:
        """The target dataset; its train ids are never used for training."""
        hp = self.hparams
        return self.build(hp.target, hp.target_root, hp.target_kwargs)

    @property
    def eval_data(self) -> ReIDDataset:
        return self.target_data

    @property
    def num_classes(self) -> int:
        """Source training identities (0 without a source)."""
        return 0 if self.source_data is None else self.source_data.num_train_pids

    def prepare_data(self) -> None:
        """Parse (generate synthetic data) and check the images, once per node."""
        hp = self.hparams
        if self.source_data is not None:
            self.verify(hp.source, self.source_data, hp.verify_images)
        self.verify(hp.target, self.target_data, hp.verify_images)

    # -- pseudo-labels -------------------------------------------------------------------
    def set_pseudo_labels(self, labels: np.ndarray | list[int] | None,
                          sampler: str | None = None) -> None:
        """Pseudo-label of every target training sample, -1 for outliers (None clears).

        Takes effect the next time the training loader is built. ``sampler`` overrides
        ``target_sampler`` for these labels (IICS switches between ``per_camera`` and ``pk``
        with its stages); None uses the configured one.
        """
        if sampler is not None and sampler not in TARGET_SAMPLERS:
            raise ValueError(f"sampler must be one of {TARGET_SAMPLERS}, got {sampler!r}")
        self.label_sampler = sampler
        if labels is None:
            self.pseudo_labels = None
            return
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(self.target_data.train):
            raise ValueError(f"got {len(labels)} pseudo-labels for "
                             f"{len(self.target_data.train)} target training images")
        self.pseudo_labels = labels

    def set_batch_type_weights(self, weights: tuple[float, float, float, float]) -> None:
        """Weights of the ``domain_pairs`` batch types from the next loader on (DG-Net++
        rounds >= 1 drop source-source batches)."""
        if len(weights) != 4:
            raise ValueError(f"need 4 batch type weights, got {list(weights)}")
        self.type_weights = tuple(float(w) for w in weights)

    def state_dict(self) -> dict[str, Any]:
        labels = self.pseudo_labels
        return {"pseudo_labels": None if labels is None else labels.tolist(),
                "label_sampler": self.label_sampler, "batch_type_weights": self.type_weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.set_pseudo_labels(state_dict.get("pseudo_labels"), state_dict.get("label_sampler"))
        if "batch_type_weights" in state_dict:
            self.set_batch_type_weights(state_dict["batch_type_weights"])

    # -- loaders -------------------------------------------------------------------------
    def target_train_dataloader(self) -> DataLoader:
        hp = self.hparams
        records = self.target_data.train
        labels = self.pseudo_labels
        pids = labels if labels is not None else np.full(len(records), -1)
        num_ids = hp.target_num_ids or hp.num_ids
        num_instances = hp.target_num_instances or hp.num_instances
        seed = hp.seed + 1  # not the source's shuffles
        kind = self.label_sampler or hp.target_sampler
        if kind == "per_camera":
            world, rank = self._world()
            sampler = PerCameraBatchSampler([r.camid for r in records], hp.num_per_camera,
                                            num_batches=hp.iters_per_epoch, seed=seed,
                                            num_replicas=world, rank=rank)
        elif labels is None or not (labels >= 0).any():  # nothing labelled yet
            sampler = self._train_sampler(records, np.zeros(len(records)), "random", num_ids,
                                          num_instances, seed)
        else:
            sampler = self._train_sampler(records, labels, kind, num_ids, num_instances, seed)
        return self._loader(ReIDImageDataset(records, self.train_transform, pids=pids), sampler)

    def domain_pair_dataloader(self) -> DataLoader:
        """The ``domain_pairs`` loader: source ids, target pseudo-labels (-1 before any)."""
        hp = self.hparams
        source, target = self.source_data.train, self.target_data.train
        labels = (self.pseudo_labels if self.pseudo_labels is not None
                  else np.full(len(target), -1))
        world, rank = self._world()
        sampler = DomainPairBatchSampler([r.pid for r in source], labels, hp.pair_batch_size,
                                         self.type_weights, num_batches=hp.iters_per_epoch,
                                         seed=hp.seed, num_replicas=world, rank=rank)
        dataset = PositivePairDataset([ReIDImageDataset(source, self.train_transform),
                                       ReIDImageDataset(target, self.train_transform,
                                                        pids=labels)])
        return self._loader(dataset, sampler)

    def train_dataloader(self) -> CombinedLoader:
        if self.hparams.batches == "domain_pairs":
            return CombinedLoader({"pairs": self.domain_pair_dataloader()},
                                  mode="max_size_cycle")
        loaders = {"target": self.target_train_dataloader()} if self.hparams.train_target else {}
        if self.source_data is not None:
            loaders = {"source": self.labelled_train_dataloader(self.source_data.train),
                       **loaders}
        return CombinedLoader(loaders, mode="max_size_cycle")
