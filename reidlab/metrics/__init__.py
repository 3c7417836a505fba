"""Retrieval evaluation: CMC / mAP / mINP, distances, k-reciprocal re-ranking, Metric."""

from reidlab.metrics.functional import (
    evaluate_from_features,
    evaluate_rank,
    iter_re_ranked,
    iter_re_ranked_features,
    pairwise_distance,
    re_ranking,
    re_ranking_features,
)
from reidlab.metrics.retrieval import ReIDRetrievalMetric

__all__ = [
    "ReIDRetrievalMetric",
    "evaluate_from_features",
    "evaluate_rank",
    "iter_re_ranked",
    "iter_re_ranked_features",
    "pairwise_distance",
    "re_ranking",
    "re_ranking_features",
]
