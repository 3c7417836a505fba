"""RetrievalEvaluation: query/gallery features -> mAP, CMC, mINP and a ranked-list figure."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
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
        flip: average every image's features with its horizontal mirror's (the
            ``flip_test_features`` switch of the module; most re-ID papers report this).
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
        flip: bool = False,
    ) -> None:
        self.metric_kwargs = dict(metric=metric, normalize_features=normalize_features,
                                  rerank=rerank, k1=k1, k2=k2, lambda_value=lambda_value)
        ReIDRetrievalMetric(**self.metric_kwargs)  # bad arguments fail now, not epochs later
        if num_figure_queries < 0 or top_k < 1:
            raise ValueError(f"need num_figure_queries >= 0 and top_k >= 1, got "
                             f"{num_figure_queries} and {top_k}")
        self.num_figure_queries = num_figure_queries
        self.flip = flip
        self.top_k = top_k
        self.metric: ReIDRetrievalMetric | None = None
        self.indices: list[torch.Tensor] = []
        self.last: dict[str, float] = {}
        self.last_ranked: dict[int, list[int]] = {}  # query index -> gallery indices shown

    # -- accumulation --------------------------------------------------------------------
    def _start(self, pl_module: pl.LightningModule) -> None:
        pl_module.flip_test_features = self.flip
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

    @staticmethod
    def partial(trainer: pl.Trainer, stage: str) -> bool:
        """Whether the trainer evaluates only part of the query + gallery
        (``fast_dev_run``, ``limit_val_batches`` / ``limit_test_batches``)."""
        limit = trainer.limit_val_batches if stage == "val" else trainer.limit_test_batches
        return bool(trainer.fast_dev_run) or isinstance(limit, int) or limit < 1.0

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        partial = self.partial(trainer, stage)
        try:
            result = self.metric.compute()
        except ValueError as err:
            if not (partial and "no query has a true match" in str(err)):
                raise
            rank_zero_warn(f"{stage}: a partial evaluation (fast_dev_run / limit_{stage}_"
                           "batches) holds no query with its match: retrieval metrics skipped")
            self.metric.reset()
            self.indices = []
            return
        if partial:
            rank_zero_warn(f"{stage}: retrieval metrics of a partial query + gallery "
                           f"(fast_dev_run / limit_{stage}_batches): not comparable to a "
                           "full evaluation")
        self.last = {k: float(v) for k, v in result.items() if k != "cmc"}
        for name, value in self.last.items():
            pl_module.log(f"{stage}/{name}", value, prog_bar=name in ("mAP", "rank1"),
                          sync_dist=False)
        if self.num_figure_queries > 0:
            self._ranked_list(trainer, stage)
        self.metric.reset()
        self.indices = []

    def _ranked_list(self, trainer: pl.Trainer, stage: str) -> None:
        """Top gallery matches of a few queries, drawn on rank 0.

        Only the chosen queries' features travel between ranks: every rank ranks its own
        gallery shard (protocol: same pid and camera removed) and sends its top-k indices,
        which rank 0 merges. Nothing of size N x D is gathered a second time.
        """
        metric, dm = self.metric, trainer.datamodule
        records, num_query = dm.eval_records, dm.num_query
        feats = dim_zero_cat(metric.features).float()
        if metric.normalize_features:
            feats = torch.nn.functional.normalize(feats, dim=1)
        indices = torch.cat(self.indices)
        device = indices.device
        count = min(self.num_figure_queries, num_query)
        chosen = torch.as_tensor(np.unique(np.linspace(0, num_query - 1, count).astype(int)),
                                 device=device)
        is_chosen = torch.isin(indices, chosen)
        q_idx, q_feats = indices[is_chosen], feats[is_chosen]
        if trainer.world_size > 1:
            q_idx, q_feats = (torch.cat(gather_all_tensors(t)) for t in (q_idx, q_feats))
        order = torch.argsort(q_idx)
        q_idx, q_feats = q_idx[order], q_feats[order]

        pids = torch.as_tensor([r.pid for r in records], device=device)
        cams = torch.as_tensor([r.camid for r in records], device=device)
        gallery = indices >= num_query
        g_idx = indices[gallery]
        dist = pairwise_distance(q_feats, feats[gallery], metric=metric.metric).to(device)
        junk = ((pids[g_idx][None] == pids[q_idx][:, None])
                & (cams[g_idx][None] == cams[q_idx][:, None]))
        dist = dist.masked_fill(junk, float("inf"))
        k = min(self.top_k, g_idx.numel())
        top_d, top_pos = dist.topk(k, dim=1, largest=False)
        pad = self.top_k - k  # equal shapes on every rank, whatever its shard size
        top_d = torch.nn.functional.pad(top_d, (0, pad), value=float("inf"))
        top_i = torch.nn.functional.pad(g_idx[top_pos], (0, pad), value=-1)
        if trainer.world_size > 1:
            top_d, top_i = (torch.cat(gather_all_tensors(t), dim=1) for t in (top_d, top_i))
        folder = figure_folder(trainer)  # collective: before the rank check
        if trainer.global_rank != 0:
            return
        self.last_ranked = {}
        ranked_paths, ranked_correct = [], []
        for q, d_row, i_row in zip(q_idx.tolist(), top_d.cpu().numpy(), top_i.cpu().numpy(),
                                   strict=True):
            valid = np.isfinite(d_row) & (i_row >= 0)
            d_row, i_row = d_row[valid], i_row[valid]
            top = i_row[np.lexsort((i_row, d_row))][: self.top_k]  # by distance, then index
            self.last_ranked[q] = top.tolist()
            ranked_paths.append([records[g].path for g in top])
            ranked_correct.append([records[g].pid == records[q].pid for g in top])
        fig = ranked_list_figure([records[q].path for q in q_idx.tolist()],
                                 [records[q].pid for q in q_idx.tolist()], ranked_paths,
                                 ranked_correct)
        log_figure(trainer, f"{stage}/ranked_list", fig, folder)
