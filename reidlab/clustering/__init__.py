"""Clustering for pseudo-labels: k-reciprocal Jaccard distance (sparse), neighbour search,
DBSCAN / agglomerative wrappers, relabelling and cluster centres."""

from reidlab.clustering.cluster import agglomerative, cluster_centers, dbscan, relabel
from reidlab.clustering.jaccard import jaccard_distance
from reidlab.clustering.neighbors import knn

__all__ = [
    "agglomerative",
    "cluster_centers",
    "dbscan",
    "jaccard_distance",
    "knn",
    "relabel",
]
