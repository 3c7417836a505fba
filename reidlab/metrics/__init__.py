"""Retrieval evaluation: CMC / mAP / mINP, distances, k-reciprocal re-ranking, Metric;
pseudo-label quality."""

from reidlab.metrics.clustering import pseudo_label_quality
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
    "pseudo_label_quality",
    "re_ranking",
    "re_ranking_features",
]
