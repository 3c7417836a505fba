"""torchmetrics ``Metric`` for re-ID retrieval: mAP, CMC rank-1/5/10 and mINP."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from reidlab.metrics.functional import evaluate_from_features

__all__ = ["ReIDRetrievalMetric"]


class ReIDRetrievalMetric(Metric):
    """Query/gallery retrieval metric under the Market-1501 protocol.

    Accumulates features, identities, camera ids and a query flag for every sample (query and
    gallery samples may arrive in any order and in the same batches); :meth:`compute` splits
    them and runs :func:`reidlab.metrics.functional.evaluate_from_features`, i.e. mAP (mean over
    queries of ``1/m sum_k k / r_k``), CMC at ranks 1, 5, 10 and mINP (mean of ``m / r_m``).

    The states are lists reduced with ``dist_reduce_fx="cat"``, so under DDP every rank
    computes on the samples of all ranks, also with uneven per-rank counts. Gallery order (which
    only matters for exact distance ties) is the gathered order. A sample seen on two ranks
    (e.g. padded by a distributed sampler) counts twice: de-duplicate in the loader.

    Flip-averaging (or any test-time augmentation) is the caller's job: pass the already
    averaged feature, e.g. ``(f(x) + f(x.flip(-1))) / 2``.

    Args:
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        normalize_features: L2-normalise the features before the distances.
        rerank: Use k-reciprocal re-ranking (Zhong et al., CVPR 2017).
        k1: Re-ranking neighbourhood size.
        k2: Re-ranking query-expansion size.
        lambda_value: Weight of the original distance in the re-ranked distance.
        max_rank: Length of the CMC curve returned under ``"cmc"``.
        chunk_size: Queries per evaluation chunk (``None``: automatic).
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    features: list[Tensor]
    pids: list[Tensor]
    camids: list[Tensor]
    is_query: list[Tensor]

    def __init__(
        self,
        metric: str = "euclidean",
        normalize_features: bool = False,
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        max_rank: int = 50,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if metric not in ("euclidean", "sqeuclidean", "cosine"):
            raise ValueError(f"unknown metric {metric!r}: use 'euclidean', 'sqeuclidean' or "
                             "'cosine'")
        if rerank and not (k1 >= 1 and k2 >= 1 and 0.0 <= lambda_value <= 1.0):
            raise ValueError(f"re-ranking needs k1, k2 >= 1 and lambda_value in [0, 1], got "
                             f"k1={k1}, k2={k2}, lambda_value={lambda_value}")
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.metric = metric
        self.normalize_features = normalize_features
        self.rerank = rerank
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.max_rank = max_rank
        self.chunk_size = chunk_size
        for name in ("features", "pids", "camids", "is_query"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, features: Tensor, pids: Tensor, camids: Tensor, is_query: Tensor | bool
    ) -> None:
        """Add a batch.

        Args:
            features: (B, D) features (already flip-averaged if wanted).
            pids: (B,) identities.
            camids: (B,) camera ids.
            is_query: (B,) bool, True for query samples, or one bool for the whole batch.
        """
        features = features.detach()
        if features.ndim != 2:
            raise ValueError(f"features must be (B, D), got {tuple(features.shape)}")
        b = features.shape[0]
        is_query = torch.as_tensor(is_query, dtype=torch.bool, device=features.device)
        if is_query.ndim == 0:
            is_query = is_query.expand(b).clone()
        pids = torch.as_tensor(pids, device=features.device).reshape(-1).long()
        camids = torch.as_tensor(camids, device=features.device).reshape(-1).long()
        if not pids.numel() == camids.numel() == is_query.numel() == b:
            raise ValueError("features, pids, camids and is_query must have the same length")
        self.features.append(features)
        self.pids.append(pids)
        self.camids.append(camids)
        self.is_query.append(is_query.reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        """Evaluate on everything accumulated (on all ranks).

        Returns:
            ``{"mAP", "rank1", "rank5", "rank10", "mINP"}`` as float tensors (fractions) and
            ``"cmc"``, the CMC curve of length ``max_rank``.
        """
        feats = dim_zero_cat(self.features).float()
        pids, camids = dim_zero_cat(self.pids), dim_zero_cat(self.camids)
        is_q = dim_zero_cat(self.is_query).bool()
        res = evaluate_from_features(
            feats[is_q],
            feats[~is_q],
            pids[is_q],
            pids[~is_q],
            camids[is_q],
            camids[~is_q],
            max_rank=self.max_rank,
            metric=self.metric,
            normalize=self.normalize_features,
            rerank=self.rerank,
            k1=self.k1,
            k2=self.k2,
            lambda_value=self.lambda_value,
            chunk_size=self.chunk_size,
        )
        cmc = torch.as_tensor(res["cmc"], dtype=torch.float32)

        def at(k: int) -> Tensor:
            return cmc[min(k, len(cmc)) - 1]

        return {
            "mAP": torch.tensor(res["mAP"], dtype=torch.float32),
            "rank1": at(1),
            "rank5": at(5),
            "rank10": at(10),
            "mINP": torch.tensor(res["mINP"], dtype=torch.float32),
            "cmc": cmc,
        }
