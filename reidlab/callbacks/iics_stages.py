"""IICSStages: the intra-/inter-camera clustering schedule of :class:`~reidlab.modules.IICS`."""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl

from reidlab.callbacks.features import collect_features
from reidlab.callbacks.pseudo_labeling import PseudoLabeling

STAGE_SAMPLERS = {"intra": "per_camera", "inter": "pk"}


class IICSStages(PseudoLabeling):
    """Re-cluster at the start of every IICS stage (paper Fig. 2) and switch the sampler.

    The stage of an epoch comes from the module (:meth:`IICS.stage_at`). At fit start and
    after the last epoch of a stage, the next stage's labels are made: every rank extracts
    the (flip-averaged) pooled features of the target training set, rank 0 clusters them
    per camera (intra) or on the inter-camera distance (inter), the labels are broadcast and
    go to :meth:`IICS.start_stage` (fresh classifiers), :meth:`IICS.reset_optimizer` and
    the DataModule with the stage's sampler: ``per_camera`` (the same number of images from
    every camera) or ``pk`` (P clusters x K images).

    Reporting and checkpointing are those of :class:`PseudoLabeling`: ``pseudo/*`` metrics
    with ``pseudo/round`` and ``pseudo/inter_stage`` (intra-stage labels are numbered per
    camera, so their quality against the true ids shows how far single-camera clusters are
    from identities), the quality figure with the inter-camera stages shaded, and the labels
    with the epoch they were made for in the checkpoint: a run resumed inside a stage
    continues with them; one resumed from a checkpoint saved before a stage's clustering
    redoes that clustering and, once Lightning has restored the optimizer, resets it
    (:meth:`IICS.reset_pseudo_label_optimizer_state`).

    Args:
        flip: flip-average the clustering features (paper's authors do).
        quality: measure the labels against the true ids when known (never for training).
    """

    def __init__(self, flip: bool = True, quality: bool = True) -> None:
        # PseudoLabeling's clustering options are unused: IICS's are the module's hparams
        super().__init__(flip=flip, quality=quality)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "stage_at"):
            raise TypeError(f"IICSStages drives an IICS module, got {type(pl_module).__name__}")
        if not hasattr(trainer.datamodule, "set_pseudo_labels"):
            raise TypeError("IICSStages needs a DataModule with set_pseudo_labels "
                            "(CrossDomainDataModule with source=None)")
        epoch = self.fit_start_epoch(trainer)
        stage, _, start = pl_module.stage_at(epoch)
        if self.labels is not None and self.labels_epoch == start:
            # resumed inside a stage: classifiers and optimizer came with the checkpoint
            trainer.datamodule.set_pseudo_labels(self.labels, sampler=STAGE_SAMPLERS[stage])
            return
        self.recluster(trainer, pl_module, for_epoch=epoch, reset_optimizer=False)
        self._optimizer_reset_pending = True  # PseudoLabeling.on_train_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_done = trainer.current_epoch + 1
        nxt = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and nxt >= trainer.max_epochs
        if not last and not trainer.should_stop and pl_module.stage_at(nxt)[2] == nxt:
            self.recluster(trainer, pl_module, for_epoch=nxt)

    def recluster(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                  for_epoch: int | None = None, reset_optimizer: bool = True) -> np.ndarray:
        """Labels of the stage of ``for_epoch`` (default: the current epoch); fresh
        classifiers and, unless ``reset_optimizer=False``, a fresh optimizer for it."""
        epoch = trainer.current_epoch if for_epoch is None else for_epoch
        stage, rnd, start = pl_module.stage_at(epoch)
        dm = trainer.datamodule
        records = dm.target_data.train
        clock = time.perf_counter()
        features = collect_features(trainer, pl_module, records, pl_module.clustering_features,
                                    flip=self.flip, desc=f"{stage}-camera features")
        labels = None
        if trainer.is_global_zero:
            camids = np.array([r.camid for r in records])
            show = trainer.progress_bar_callback is not None
            labels = (pl_module.intra_camera_labels(features, camids) if stage == "intra"
                      else pl_module.inter_camera_labels(features, camids, rnd, progress=show))
        labels = trainer.strategy.broadcast(labels, src=0)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.labels_epoch = start
        pl_module.start_stage(stage, start, self.labels)
        if reset_optimizer:
            pl_module.reset_optimizer(stage)
        dm.set_pseudo_labels(self.labels, sampler=STAGE_SAMPLERS[stage])
        self._report(trainer, records, time.perf_counter() - clock,
                     extra={"round": float(rnd), "inter_stage": float(stage == "inter")})
        return self.labels

    def quality_figure(self) -> plt.Figure:
        """:meth:`PseudoLabeling.quality_figure` with the inter-camera stages shaded."""
        fig = super().quality_figure()
        epochs = [h["epoch"] for h in self.history]
        spans = [(h["epoch"], epochs[i + 1] if i + 1 < len(epochs) else h["epoch"] + 1)
                 for i, h in enumerate(self.history) if h.get("inter_stage")]
        for ax in fig.axes:
            for k, (begin, end) in enumerate(spans):
                ax.axvspan(begin, end, color="0.9", zorder=0,
                           label="inter-camera stage" if k == 0 else None)
        fig.axes[0].legend(fontsize=7)
        return fig
