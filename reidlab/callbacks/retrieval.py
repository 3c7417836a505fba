"""RetrievalEvaluation: query/gallery features -> mAP, CMC, mINP and a ranked-list figure."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from reidlab.callbacks.figures import figure_folder, log_figure, ranked_list_figure
from reidlab.metrics import ReIDRetrievalMetric, pairwise_distance


class RetrievalEvaluation(pl.Callback):
    """Evaluate re-ID retrieval at the end of validation and test.

    Consumes what the module's ``validation_step`` / ``test_step`` return
    (``{"features", "pids", "camids", "indices"}``, see
    :class:`~reidlab.modules.base.ReIDModule`); the DataModule's evaluation loader lists
    queries first, so ``indices < datamodule.num_query`` marks queries. Under DDP every
    rank evaluates its shard and the metric gathers the features (no sample is counted
    twice). Logs ``{stage}/mAP``, ``rank1``, ``rank5``, ``rank10`` and ``mINP`` (fractions)
    and a ranked-list figure of a few queries with their top gallery matches.

    Args:
        metric: ``cosine``, ``euclidean`` or ``sqeuclidean``.
        normalize_features: L2-normalise features first.
        rerank: k-reciprocal re-ranking (Zhong et al. 2017) with ``k1``, ``k2``, ``lambda_value``.
        k1: re-ranking k1.
        k2: re-ranking k2.
        lambda_value: re-ranking weight of the original distance.
        num_figure_queries: queries shown in the ranked-list figure (0: no figure).
        top_k: gallery images shown per query.
    """

    def __init__(
        self,
        metric: str = "cosine",
        normalize_features: bool = True,
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        num_figure_queries: int = 6,
        top_k: int = 10,
    ) -> None:
        self.metric_kwargs = dict(metric=metric, normalize_features=normalize_features,
                                  rerank=rerank, k1=k1, k2=k2, lambda_value=lambda_value)
        self.num_figure_queries = num_figure_queries
        self.top_k = top_k
        self.metric: ReIDRetrievalMetric | None = None
        self.indices: list[torch.Tensor] = []
        self.last: dict[str, float] = {}

    # -- accumulation --------------------------------------------------------------------
    def _start(self, pl_module: pl.LightningModule) -> None:
        self.metric = ReIDRetrievalMetric(**self.metric_kwargs).to(pl_module.device)
        self.indices = []

    def _update(self, trainer: pl.Trainer, outputs: dict[str, torch.Tensor]) -> None:
        indices = outputs["indices"]
        is_query = indices < trainer.datamodule.num_query
        self.metric.update(outputs["features"].float(), outputs["pids"], outputs["camids"],
                           is_query)
        self.indices.append(indices)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self._update(trainer, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        self._update(trainer, outputs)

    # -- results -------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module, "test")

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        result = self.metric.compute()
        self.last = {k: float(v) for k, v in result.items() if k != "cmc"}
        for name, value in self.last.items():
            pl_module.log(f"{stage}/{name}", value, prog_bar=name in ("mAP", "rank1"),
                          sync_dist=False)
        if self.num_figure_queries > 0:
            self._ranked_list(trainer, stage)
        self.metric.reset()
        self.indices = []

    def _ranked_list(self, trainer: pl.Trainer, stage: str) -> None:
        """Gather features in dataset order (all ranks), draw the figure on rank 0."""
        metric = self.metric
        local = {"features": dim_zero_cat(metric.features), "indices": torch.cat(self.indices)}
        if trainer.world_size > 1:
            local = {k: torch.cat(gather_all_tensors(v)) for k, v in local.items()}
        folder = figure_folder(trainer)  # collective: before the rank check
        if trainer.global_rank != 0:
            return
        records = trainer.datamodule.eval_records
        num_query = trainer.datamodule.num_query
        order = torch.argsort(local["indices"])
        feats = local["features"][order].float()
        if metric.normalize_features:
            feats = torch.nn.functional.normalize(feats, dim=1)
        pids = np.array([r.pid for r in records])
        cams = np.array([r.camid for r in records])
        chosen = np.linspace(0, num_query - 1, min(self.num_figure_queries, num_query))
        chosen = np.unique(chosen.astype(int))
        dist = pairwise_distance(feats[chosen], feats[num_query:], metric=metric.metric).cpu()
        ranked_paths, ranked_correct = [], []
        for row, q in zip(dist, chosen, strict=True):
            g_pids, g_cams = pids[num_query:], cams[num_query:]
            keep = ~((g_pids == pids[q]) & (g_cams == cams[q]))  # protocol: same pid+camera
            cand = np.flatnonzero(keep)
            top = cand[np.argsort(row.numpy()[cand], kind="stable")[: self.top_k]]
            ranked_paths.append([records[num_query + g].path for g in top])
            ranked_correct.append((g_pids[top] == pids[q]).tolist())
        fig = ranked_list_figure([records[q].path for q in chosen], pids[chosen].tolist(),
                                 ranked_paths, ranked_correct)
        log_figure(trainer, f"{stage}/ranked_list", fig, folder)
