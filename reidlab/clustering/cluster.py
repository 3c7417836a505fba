"""Clustering of precomputed distances (scikit-learn DBSCAN / agglomerative) and label helpers."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from sklearn.cluster import DBSCAN
from torch import Tensor
from tqdm.auto import tqdm

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


LINKAGES = ("average", "complete", "single")


def _condensed(dist: ArrayLike | sp.spmatrix) -> np.ndarray:
    """The upper triangle (scipy's condensed form) of a square matrix, or a condensed vector
    as it is."""
    if sp.issparse(dist):
        dist = _dense(dist)
    d = _numpy(dist)
    if d.ndim == 1:
        return d
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square matrix or a condensed vector, got shape "
                         f"{d.shape}")
    return squareform(d, checks=False)


def _cut(n: int, merges: np.ndarray) -> np.ndarray:
    """Labels of ``n`` leaves after applying the first merges of a scipy linkage matrix."""
    comp = np.arange(n + len(merges))
    for t in range(len(merges) - 1, -1, -1):  # parents before children
        comp[merges[t, :2].astype(np.int64)] = comp[n + t]
    return relabel(comp[:n])


def agglomerative(
    dist: ArrayLike | sp.spmatrix,
    n_clusters: int | None = None,
    distance_threshold: float | None = None,
    linkage: str = "average",
) -> np.ndarray:
    """Agglomerative clustering of precomputed distances (scipy's hierarchical linkage).

    Merges the two closest clusters under ``linkage`` ("average", "complete" or "single")
    until ``n_clusters`` remain, or while the closest pair is nearer than
    ``distance_threshold`` (scikit-learn's ``AgglomerativeClustering`` semantics, same
    partitions). Distances may be negative (e.g. IICS eq. 5).

    Memory: scipy works on the condensed upper triangle, N(N-1)/2 float64 values; pass that
    vector directly (see :func:`condensed_distances`) to avoid ever holding N x N.

    Args:
        dist: N x N distances (numpy array, tensor, or scipy sparse matrix whose missing
            entries count as 1, the Jaccard distance of :func:`jaccard_distance`), or the
            condensed vector of length N(N-1)/2.
        n_clusters: Number of clusters (clamped to N with a warning).
        distance_threshold: Linkage distance from which clusters are not merged.
        linkage: Linkage criterion.

    Returns:
        int64 labels 0..K-1 of shape (N,), numbered by :func:`relabel`.
    """
    if (n_clusters is None) == (distance_threshold is None):
        raise ValueError("give exactly one of n_clusters and distance_threshold")
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
    y = _condensed(dist)
    n = int(round((1 + np.sqrt(1 + 8 * len(y))) / 2))
    if n * (n - 1) // 2 != len(y):
        raise ValueError(f"a condensed distance vector of length {len(y)} fits no N")
    if n_clusters is not None:
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if n_clusters > n:
            warnings.warn(f"n_clusters={n_clusters} > N={n}: using {n}", stacklevel=2)
            n_clusters = n
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    if not np.isfinite(y).all():
        raise ValueError("agglomerative clustering got non-finite distances")
    merges = hierarchy.linkage(y, method=linkage)
    del y
    count = (n - n_clusters if n_clusters is not None
             else int(np.searchsorted(merges[:, 2], distance_threshold, side="left")))
    return _cut(n, merges[:count])


def condensed_distances(
    n: int,
    rows: Callable[[int, int, int], Tensor],
    chunk_size: int = 1024,
    progress: bool = False,
    desc: str = "distances",
) -> np.ndarray:
    """Build the condensed (upper-triangle) distance vector of ``n`` samples block by block.

    Only the upper triangle is asked for: block ``i0..i1-1`` needs the samples from ``i0`` on,
    so every pair is computed once (half the work of full rows).

    Args:
        n: number of samples.
        rows: ``rows(i0, i1, j0)`` -> distances ``(i1 - i0, n - j0)`` of samples
            ``i0..i1-1`` to samples ``j0..n-1`` (called with ``j0 = i0``).
        chunk_size: rows per block (memory per block: ``chunk_size * n`` values).
        progress: show a progress bar.
        desc: its label.

    Returns:
        float64 vector of length n(n-1)/2, scipy's ``squareform`` order; the only
        O(n^2) allocation.
    """
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    for i0 in tqdm(range(0, n, chunk_size), desc=desc, disable=not progress, leave=False):
        i1 = min(i0 + chunk_size, n)
        block = rows(i0, i1, i0)
        block = block.detach().cpu().numpy() if isinstance(block, Tensor) else block
        for r in range(i0, i1):
            start = r * n - r * (r + 1) // 2  # offset of (r, r + 1)
            out[start: start + n - r - 1] = block[r - i0, r + 1 - i0:]
    return out


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
