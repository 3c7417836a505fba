"""PseudoLabeling: re-cluster the target training set before the first epoch and after
every epoch, and hand the labels to the DataModule and the module."""

from __future__ import annotations

import time
import warnings
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from reidlab.callbacks.features import collect_features
from reidlab.callbacks.figures import figure_folder, log_figure
from reidlab.clustering import (
    agglomerative,
    cluster_centers,
    dbscan,
    jaccard_distance,
    reranked_distance,
)
from reidlab.metrics import pairwise_distance
from reidlab.metrics.clustering import pseudo_label_quality

METHODS = ("dbscan", "agglomerative")
DISTANCES = ("jaccard", "reranked", "cosine")


class PseudoLabeling(pl.Callback):
    """Clustering-based pseudo-labels for the target domain (SBase / DCDFA, and any method
    with ``on_pseudo_labels``).

    At fit start (unless a resumed run already has the labels of the coming epoch) and at
    the end of every ``every_n_epochs``-th epoch (except the last; a module with
    ``reclusters_after(epoch) -> bool`` decides instead, e.g. DG-Net++'s rounds):

    1. every rank extracts its shard of the target training set with
       ``module.clustering_features`` (the teacher where there is one; falls back to
       ``extract_features``), optionally flip-averaged; shards are gathered with their
       dataset indices and de-duplicated (:func:`~reidlab.callbacks.features.collect_features`);
    2. rank 0 clusters: k-reciprocal Jaccard distance (k1, k2), the full re-ranked
       distance (k1, k2, lambda_value; :func:`~reidlab.clustering.reranked_distance`) or
       cosine distance, then DBSCAN (eps, min_samples) or agglomerative clustering;
       outliers get -1; the labels are broadcast;
    3. the labels go to ``datamodule.set_pseudo_labels`` (the next epoch's loader uses them;
       train with ``reload_dataloaders_every_n_epochs=1``) and to
       ``module.on_pseudo_labels(labels, centers, features, epoch=...)`` with the cluster
       centres ``(K, D)``, all features ``(N, D)`` and the epoch the labels are for.

    Before the first clustering of a fit, ``module.prepare_target_statistics(trainer)`` is
    called when the module has it (SBase re-estimates its target BN statistics there).

    Logs ``pseudo/num_clusters``, ``pseudo/outlier_fraction`` and, when the target's true
    training ids are known (``quality=True``; synthetic data, benchmarks; never used for
    training), ``pseudo/ari``, ``nmi``, ``pair_precision``, ``pair_recall`` with a plot over
    epochs. Its state (labels, the epoch they are for, the number of finished epochs, the
    history) is in the checkpoint.

    Resume: a run resumed with the labels of the epoch it continues with keeps them (the
    module's classifier and memory came with the checkpoint). One resumed from a checkpoint
    saved before a re-clustering (a last epoch, continued with a larger ``max_epochs``; a
    callback that saves at epoch end before this one) re-clusters at fit start; since
    Lightning restores the optimizer only after ``on_fit_start``, the optimizer state of
    what the clustering re-initialised is dropped again at train start
    (``module.reset_pseudo_label_optimizer_state()``).

    Degenerate clusterings do not crash: when every sample is an outlier the target loss is
    skipped for that epoch (with a warning); a single cluster or fewer samples than
    ``min_samples`` are handled the same way by the modules.

    Args:
        method: ``dbscan`` or ``agglomerative``.
        distance: ``jaccard`` (k-reciprocal, sparse), ``reranked`` (Zhong's re-ranking,
            sparse; DBSCAN only, ``eps < 1 - lambda_value``) or ``cosine`` (dense N x N:
            small N).
        eps: DBSCAN neighbourhood radius (0.6 in SBase).
        min_samples: DBSCAN core-point size (4 in SBase).
        n_clusters: agglomerative: fixed number of clusters.
        distance_threshold: agglomerative: merge threshold instead of a fixed count.
        linkage: agglomerative linkage.
        k1: Jaccard k-reciprocal neighbourhood (30).
        k2: Jaccard local query expansion (6).
        lambda_value: ``reranked``: weight of the original distance (0.3).
        search: ``exact`` or ``approx`` (pynndescent) neighbour search.
        flip: flip-average the clustering features.
        every_n_epochs: re-cluster after every n-th epoch.
        quality: measure the labels against the target's true ids when available.
    """

    def __init__(
        self,
        method: str = "dbscan",
        distance: str = "jaccard",
        eps: float = 0.6,
        min_samples: int = 4,
        n_clusters: int | None = None,
        distance_threshold: float | None = None,
        linkage: str = "average",
        k1: int = 30,
        k2: int = 6,
        lambda_value: float = 0.3,
        search: str = "exact",
        flip: bool = False,
        every_n_epochs: int = 1,
        quality: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if distance == "reranked" and (method != "dbscan" or not 0 <= lambda_value < 1
                                       or eps >= 1 - lambda_value):
            raise ValueError("distance='reranked' needs method='dbscan', 0 <= lambda_value < 1 "
                             f"and eps < 1 - lambda_value (missing pairs are >= that), got "
                             f"method={method!r}, eps={eps}, lambda_value={lambda_value}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.method, self.distance = method, distance
        self.eps, self.min_samples = eps, min_samples
        self.n_clusters, self.distance_threshold, self.linkage = (
            n_clusters, distance_threshold, linkage)
        self.k1, self.k2, self.lambda_value, self.search = k1, k2, lambda_value, search
        self.flip, self.every_n_epochs, self.quality = flip, every_n_epochs, quality
        self.labels: np.ndarray | None = None
        self.labels_epoch = -1  # the epoch the current labels were made for
        self.epochs_done = 0  # training epochs finished, as Lightning counts them
        self.history: list[dict[str, float]] = []
        self._restored = False  # state loaded from a checkpoint, not yet used by a fit
        self._optimizer_reset_pending = False

    # -- hooks ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(trainer.datamodule, "set_pseudo_labels"):
            raise TypeError("PseudoLabeling needs a DataModule with set_pseudo_labels "
                            "(CrossDomainDataModule)")
        epoch = self.fit_start_epoch(trainer)
        if self.labels is not None and self.labels_still_valid(pl_module, epoch):
            # resumed: the module's classifier and memory came with the checkpoint
            trainer.datamodule.set_pseudo_labels(self.labels)
            return
        prepare = getattr(pl_module, "prepare_target_statistics", None)
        if prepare is not None:  # e.g. SBase's target BN statistics, before its first labels
            prepare(trainer)
        self.recluster(trainer, pl_module, for_epoch=epoch)
        self._optimizer_reset_pending = True

    def reclusters_after(self, pl_module: pl.LightningModule, epoch: int) -> bool:
        """Whether the labels change after ``epoch`` (the module's schedule, if it has one,
        else every ``every_n_epochs``-th epoch)."""
        schedule = getattr(pl_module, "reclusters_after", None)
        return schedule(epoch) if schedule is not None else (epoch + 1) % self.every_n_epochs == 0

    def labels_still_valid(self, pl_module: pl.LightningModule, epoch: int) -> bool:
        """Whether the current labels are those of ``epoch`` (no re-clustering was due from
        the epoch they were made for up to it)."""
        return 0 <= self.labels_epoch <= epoch and not any(
            self.reclusters_after(pl_module, e) for e in range(self.labels_epoch, epoch))

    def fit_start_epoch(self, trainer: pl.Trainer) -> int:
        """The epoch a fit starts with, also inside ``on_fit_start`` of a resumed run
        (Lightning restores its loops only after that hook, so ``trainer.current_epoch``
        still reads 0 there): the finished epochs counted in this callback's own state."""
        epoch = self.epochs_done if self._restored else trainer.current_epoch
        self._restored = False
        return epoch

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the optimizer a resumed run restored after on_fit_start holds the moments of
        # what the fit-start clustering re-initialised
        if self._optimizer_reset_pending:
            self._optimizer_reset_pending = False
            reset = getattr(pl_module, "reset_pseudo_label_optimizer_state", None)
            if reset is not None:
                reset()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_done = trainer.current_epoch + 1
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if self.reclusters_after(pl_module, epoch) and not last and not trainer.should_stop:
            self.recluster(trainer, pl_module, for_epoch=epoch + 1)

    # -- clustering ----------------------------------------------------------------------
    def cluster(self, features: torch.Tensor, progress: bool = False) -> np.ndarray:
        """Labels of ``features`` (-1 = outlier), clusters numbered 0..K-1."""
        n = len(features)
        if self.distance == "jaccard":
            dist = jaccard_distance(features, self.k1, self.k2, search=self.search,
                                    progress=progress)
        elif self.distance == "reranked":
            dist = reranked_distance(features, self.k1, self.k2, self.lambda_value,
                                     search=self.search, progress=progress)
        else:
            dist = pairwise_distance(features, features, metric="cosine").numpy()
        if self.method == "dbscan":
            return dbscan(dist, eps=self.eps, min_samples=self.min_samples)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        return agglomerative(dist, n_clusters=self.n_clusters,
                             distance_threshold=self.distance_threshold, linkage=self.linkage)

    def recluster(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                  for_epoch: int | None = None) -> np.ndarray:
        """Extract, cluster (rank 0), broadcast, and hand the labels over."""
        dm = trainer.datamodule
        records = dm.target_data.train
        feature_fn = getattr(pl_module, "clustering_features", pl_module.extract_features)
        start = time.perf_counter()
        features = collect_features(trainer, pl_module, records, feature_fn, flip=self.flip,
                                    desc="target features")
        show = trainer.progress_bar_callback is not None
        labels = self.cluster(features, progress=show) if trainer.is_global_zero else None
        labels = trainer.strategy.broadcast(labels, src=0)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.labels_epoch = trainer.current_epoch if for_epoch is None else for_epoch
        centers = (cluster_centers(features, self.labels) if (self.labels >= 0).any()
                   else features.new_zeros(0, features.shape[1]))
        dm.set_pseudo_labels(self.labels)
        if hasattr(pl_module, "on_pseudo_labels"):
            pl_module.on_pseudo_labels(self.labels, centers, features, epoch=self.labels_epoch)
        self._report(trainer, records, time.perf_counter() - start)
        return self.labels

    # -- reporting -----------------------------------------------------------------------
    def _report(self, trainer: pl.Trainer, records, seconds: float,
                extra: dict[str, float] | None = None) -> None:
        labels = self.labels
        if self.quality and all(r.pid >= 0 for r in records):
            stats = pseudo_label_quality(labels, np.array([r.pid for r in records]))
        else:
            num = float(np.unique(labels[labels >= 0]).size)
            stats = {"num_clusters": num, "outlier_fraction": float((labels < 0).mean())}
        stats["seconds"] = seconds
        stats.update(extra or {})
        self.history.append({"epoch": float(self.labels_epoch), **stats})
        if len(labels) and (labels < 0).all():
            warnings.warn(f"every target sample is an outlier for epoch {self.labels_epoch}: "
                          "the target losses are skipped this epoch", stacklevel=2)
        folder = figure_folder(trainer) if self.quality else None  # collective
        if not trainer.is_global_zero:
            return
        rank_zero_info("pseudo-labels for epoch {}: {}".format(
            self.labels_epoch, ", ".join(f"{k} {v:.3g}" for k, v in stats.items())))
        for logger in trainer.loggers:
            logger.log_metrics({f"pseudo/{k}": v for k, v in stats.items()},
                               step=trainer.global_step)
        if folder is not None and "ari" in stats:
            log_figure(trainer, "pseudo/quality", self.quality_figure(), folder)

    def quality_figure(self) -> plt.Figure:
        """Pseudo-label quality and cluster count over the re-clusterings so far."""
        epochs = [h["epoch"] for h in self.history]
        fig, (ax, ax_n) = plt.subplots(1, 2, figsize=(9, 3.2))
        for key in ("ari", "nmi", "pair_precision", "pair_recall", "outlier_fraction"):
            if all(key in h for h in self.history):
                ax.plot(epochs, [h[key] for h in self.history], marker="o", label=key)
        ax.set(xlabel="epoch", ylim=(0, 1.02), title="pseudo-label quality")
        ax.legend(fontsize=7)
        ax_n.plot(epochs, [h["num_clusters"] for h in self.history], marker="o", color="k")
        ax_n.set(xlabel="epoch", title="clusters")
        fig.tight_layout()
        return fig

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"labels": None if self.labels is None else self.labels.tolist(),
                "labels_epoch": self.labels_epoch, "epochs_done": self.epochs_done,
                "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        labels = state_dict.get("labels")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.labels_epoch = state_dict.get("labels_epoch", -1)
        self.epochs_done = state_dict.get("epochs_done", max(self.labels_epoch, 0))
        self._restored = True
        self.history = list(state_dict.get("history", []))
