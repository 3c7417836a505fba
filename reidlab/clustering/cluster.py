"""Clustering of precomputed distances (scikit-learn DBSCAN / agglomerative) and label helpers."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def relabel(labels: ArrayLike) -> np.ndarray:
    """Renumber cluster labels to 0..K-1 in order of first appearance; every negative label
    (outlier) becomes -1.

    Args:
        labels: Integer labels, shape (N,).

    Returns:
        int64 array of shape (N,).
    """
    lab = _numpy(labels).astype(np.int64).reshape(-1)
    out = np.full(lab.shape, -1, dtype=np.int64)
    keep = lab >= 0
    _, first, inverse = np.unique(lab[keep], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    out[keep] = rank[inverse]
    return out


def _eps_graph(dist: sp.spmatrix, eps: float) -> sp.csr_matrix:
    """The entries ``<= eps`` of ``dist`` (explicit zeros kept), each row sorted by distance as
    scikit-learn expects."""
    g = sp.csr_matrix(dist)
    keep = np.flatnonzero(g.data <= eps)
    row = np.searchsorted(g.indptr, keep, side="right") - 1
    val = g.data[keep]
    order = np.lexsort((val, row))
    indptr = np.zeros(g.shape[0] + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(row, minlength=g.shape[0]))
    return sp.csr_matrix((val[order], g.indices[keep][order], indptr), shape=g.shape)


def dbscan(dist: ArrayLike | sp.spmatrix, eps: float = 0.6, min_samples: int = 4) -> np.ndarray:
    """DBSCAN (Ester et al. 1996; scikit-learn, ``metric="precomputed"``) on a distance matrix.

    A sparse ``dist`` (e.g. :func:`jaccard_distance`) lists the distances that exist; a missing
    entry means "not a neighbour", which equals DBSCAN on the dense matrix whenever the missing
    distances exceed ``eps`` (Jaccard: missing = 1, hence ``eps < 1`` is required). Only the
    entries ``<= eps`` are handed to scikit-learn, which takes the missing diagonal as 0: a
    point counts in its own neighbourhood (``min_samples`` includes it).

    Args:
        dist: N x N distances: scipy sparse matrix, numpy array or tensor.
        eps: Neighbourhood radius.
        min_samples: Neighbourhood size (the point included) making a core point.

    Returns:
        int64 labels of shape (N,), clusters numbered 0..K-1 by :func:`relabel`, -1 = outlier
        (all -1 when no point is a core point, e.g. N < min_samples).
    """
    if sp.issparse(dist):
        if eps >= 1:
            raise ValueError(
                f"eps={eps} >= 1 on a sparse matrix: missing entries (distance 1 for the "
                "Jaccard distance) would be neighbours; pass a dense matrix instead"
            )
        x = _eps_graph(dist, eps)
    else:
        x = _numpy(dist)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"dist must be a square matrix, got shape {x.shape}")
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(x)
    return relabel(labels)


def _dense(dist: ArrayLike | sp.spmatrix) -> np.ndarray:
    if not sp.issparse(dist):
        return _numpy(dist)
    coo = sp.coo_matrix(dist)
    out = np.ones(coo.shape, dtype=np.result_type(coo.dtype, np.float32))
    out[coo.row, coo.col] = coo.data
    return out


def agglomerative(
    dist: ArrayLike | sp.spmatrix,
    n_clusters: int | None = None,
    distance_threshold: float | None = None,
    linkage: str = "average",
) -> np.ndarray:
    """Agglomerative clustering (scikit-learn, ``metric="precomputed"``) of a distance matrix.

    Merges the two closest clusters under ``linkage`` ("average", "complete" or "single")
    until ``n_clusters`` remain, or while the closest pair is nearer than
    ``distance_threshold``. The matrix is used densely (N x N): a scipy sparse matrix is
    densified with missing entries = 1 (the Jaccard distance of :func:`jaccard_distance`).

    Args:
        dist: N x N distances: numpy array, tensor or scipy sparse matrix.
        n_clusters: Number of clusters (clamped to N with a warning).
        distance_threshold: Linkage distance above which clusters are not merged.
        linkage: Linkage criterion.

    Returns:
        int64 labels 0..K-1 of shape (N,), numbered by :func:`relabel`.
    """
    if (n_clusters is None) == (distance_threshold is None):
        raise ValueError("give exactly one of n_clusters and distance_threshold")
    d = _dense(dist)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square matrix, got shape {d.shape}")
    n = d.shape[0]
    if n_clusters is not None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if n_clusters > n:
            warnings.warn(f"n_clusters={n_clusters} > N={n}: using {n}", stacklevel=2)
            n_clusters = n
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=n_clusters,
        distance_threshold=distance_threshold,
        metric="precomputed",
        linkage=linkage,
    )
    return relabel(model.fit_predict(d))


def cluster_centers(features: Tensor, labels: ArrayLike) -> Tensor:
    """Mean feature of every cluster: ``c_k = mean{f_i : labels_i = k}``, k = 0..K-1 with
    ``K = max(labels) + 1``; outliers (-1) are ignored, a label without members gets zeros.

    Args:
        features: Features (N, D), any device (numpy arrays are accepted too).
        labels: Integer labels (N,), e.g. from :func:`dbscan`.

    Returns:
        Tensor (K, D) on the device of ``features`` (float dtype kept, integers -> float32).
    """
    f = features.detach() if isinstance(features, Tensor) else torch.as_tensor(features)
    if not f.is_floating_point():
        f = f.float()
    lab = torch.as_tensor(_numpy(labels).astype(np.int64).reshape(-1), device=f.device)
    if lab.numel() != f.shape[0]:
        raise ValueError(f"{lab.numel()} labels for {f.shape[0]} features")
    keep = lab >= 0
    lab, f = lab[keep], f[keep]
    k = int(lab.max()) + 1 if lab.numel() else 0
    sums = f.new_zeros((k, f.shape[1])).index_add_(0, lab, f)
    counts = torch.bincount(lab, minlength=k).clamp_min_(1)
    return sums / counts[:, None].to(f.dtype)
