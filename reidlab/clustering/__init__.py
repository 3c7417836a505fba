"""Clustering for pseudo-labels: k-reciprocal Jaccard and re-ranked distances (sparse),
neighbour search, DBSCAN / agglomerative wrappers, relabelling, cluster centres and the
Jaccard similarity of classification scores."""

from reidlab.clustering.cluster import (
    agglomerative,
    cluster_centers,
    condensed_distances,
    dbscan,
    relabel,
)
from reidlab.clustering.jaccard import jaccard_distance, reranked_distance
from reidlab.clustering.neighbors import knn
from reidlab.clustering.scores import score_jaccard

__all__ = [
    "agglomerative",
    "cluster_centers",
    "condensed_distances",
    "dbscan",
    "jaccard_distance",
    "knn",
    "relabel",
    "reranked_distance",
    "score_jaccard",
]
