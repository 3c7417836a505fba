"""Tests of reidlab.clustering: k-reciprocal Jaccard distance, neighbour search, DBSCAN /
agglomerative wrappers, relabelling and cluster centres."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

import reidlab.clustering.jaccard as jaccard_module
from reidlab.clustering import (
    agglomerative,
    cluster_centers,
    dbscan,
    jaccard_distance,
    knn,
    relabel,
)

# --------------------------------------------------------------------------------------------
# Data and independent references
# --------------------------------------------------------------------------------------------


def _gauss(n, n_ids=8, dim=16, noise=0.6, seed=0):
    """Identity centres + Gaussian noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    ids = rng.integers(0, n_ids, n)
    return (centres[ids] + noise * rng.normal(size=(n, dim))).astype(np.float32), ids


def _lattice(n, n_ids=6, dim=16, flips=3, seed=0):
    """+-1 vectors (identity sign pattern with a few flipped signs): after normalisation the
    entries are +-1/4, so every distance is exact in float32 and ties (and exact duplicates,
    zero distances) abound."""
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1.0, 1.0], size=(n_ids, dim))
    ids = rng.integers(0, n_ids, n)
    x = centres[ids].copy()
    for i in range(n):
        x[i, rng.choice(dim, rng.integers(0, flips + 1), replace=False)] *= -1
    return x.astype(np.float32), ids


def _duplicated(n, seed=0):
    """Gaussian clusters where a third of the rows are exact copies of other rows."""
    x, ids = _gauss(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    dst = rng.choice(n, n // 3, replace=False)
    src = rng.choice(np.setdiff1d(np.arange(n), dst), n // 3)
    x[dst], ids[dst] = x[src], ids[src]
    return x, ids


def _ranking(x):
    """Per row: itself first, then the others by increasing d = 2 - 2 x_i.x_j, ties by index."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    d = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0).round(9)  # round: exact ties stay ties
    order = [sorted(range(n), key=lambda j, i=i: (j != i, d[i, j], j)) for i in range(n)]
    return d, order


def _reference_jaccard(x, k1, k2):
    """The definition, written with Python sets and dense numpy (small N only)."""
    d, order = _ranking(x)
    n = len(x)

    def nearest(i, k):  # R(i, k): the k + 1 nearest, i included
        return order[i][: k + 1]

    def reciprocal(i, k):  # R*(i, k)
        return [j for j in nearest(i, k) if i in nearest(j, k)]

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for j in r_i:
            r_j = reciprocal(j, half)
            if len(set(r_j) & set(r_i)) > 2.0 / 3.0 * len(r_j):
                expanded |= set(r_j)
        cols = sorted(expanded)
        w = np.exp(-d[i, cols])
        v[i, cols] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[order[i][:k2]].mean(axis=0) for i in range(n)])
    jac = np.empty((n, n))
    for i in range(n):
        jac[i] = 1.0 - np.minimum(v[i], v).sum(1) / np.maximum(v[i], v).sum(1)
    return jac


def _dense(m: sp.csr_matrix) -> np.ndarray:
    out = np.ones(m.shape)
    coo = m.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


def _check_structure(jac: sp.csr_matrix, n: int) -> None:
    assert isinstance(jac, sp.csr_matrix) and jac.dtype == np.float32 and jac.shape == (n, n)
    assert (jac != jac.T).nnz == 0  # exactly symmetric
    assert np.all(jac.data >= 0) and np.all(jac.data <= 1)
    # explicit zero diagonal, stored
    rows = np.repeat(np.arange(n), np.diff(jac.indptr))
    on_diag = rows == jac.indices
    assert on_diag.sum() == n and np.all(jac.data[on_diag] == 0)
    # indices sorted within rows, as flagged
    assert jac.has_sorted_indices
    resorted = jac.copy()
    resorted.has_sorted_indices = False
    resorted.sort_indices()
    np.testing.assert_array_equal(resorted.indices, jac.indices)


# --------------------------------------------------------------------------------------------
# jaccard_distance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,n,k1,k2,chunk",
    [
        ("gauss", 120, 30, 6, None),
        ("gauss", 100, 20, 1, 7),
        ("gauss", 80, 7, 3, 5),
        ("gauss", 60, 5, 2, None),  # odd k1: round(k1 / 2) = 2 (half to even)
        ("gauss", 20, 30, 6, None),  # k1 + 1 > N
        ("lattice", 150, 30, 6, None),
        ("lattice", 100, 9, 1, 11),
        ("duplicated", 120, 20, 6, 9),
        ("duplicated", 90, 10, 1, None),
    ],
)
def test_jaccard_matches_dense_reference(data, n, k1, k2, chunk):
    x, _ = {"gauss": _gauss, "lattice": _lattice, "duplicated": _duplicated}[data](n)
    expected = _reference_jaccard(x, k1, k2)
    jac = jaccard_distance(x, k1=k1, k2=k2, chunk_size=chunk)
    _check_structure(jac, n)
    np.testing.assert_allclose(_dense(jac), expected, atol=1e-5, rtol=0)
    # stored entries = exactly the pairs with J < 1 (sharing a column of V)
    coo = jac.tocoo()
    stored = np.zeros((n, n), dtype=bool)
    stored[coo.row, coo.col] = True
    np.testing.assert_array_equal(stored, expected < 1)
    if data != "gauss":  # identical V rows off the diagonal: explicit zeros are kept
        off = coo.row != coo.col
        assert np.any(coo.data[off] == 0)
        assert np.all(expected[coo.row, coo.col][coo.data == 0] < 1e-6)


@pytest.mark.parametrize("scan_fraction", [0.0, float("inf")])
def test_jaccard_both_pair_finding_paths(monkeypatch, scan_fraction):
    # every chunk scans its buffer (0) / every chunk deduplicates and sorts its keys (inf)
    monkeypatch.setattr(jaccard_module, "_SCAN_FRACTION", scan_fraction)
    x, _ = _duplicated(90)
    jac = jaccard_distance(x, k1=12, k2=4, chunk_size=8)
    _check_structure(jac, 90)
    np.testing.assert_allclose(_dense(jac), _reference_jaccard(x, 12, 4), atol=1e-5, rtol=0)


def test_jaccard_torch_input_and_empty():
    x, _ = _gauss(50)
    a = jaccard_distance(x, k1=10, k2=3)
    b = jaccard_distance(torch.from_numpy(x).double(), k1=10, k2=3)
    assert (a != b).nnz == 0
    assert jaccard_distance(np.zeros((0, 8)), k1=10).shape == (0, 0)
    one = jaccard_distance(np.ones((1, 8)), k1=10)
    assert one.shape == (1, 1) and one.nnz == 1 and one[0, 0] == 0
    with pytest.raises(ValueError):
        jaccard_distance(x, k1=0)
    with pytest.raises(ValueError):
        jaccard_distance(x, search="fast")


def test_jaccard_approx_search_agrees_with_exact():
    x, ids = _gauss(600, n_ids=30, dim=32, noise=0.5, seed=3)
    exact = jaccard_distance(x, k1=20, k2=6)
    approx = jaccard_distance(x, k1=20, k2=6, search="approx")
    _check_structure(approx, len(x))
    diff = np.abs(_dense(exact) - _dense(approx))
    assert np.mean(diff > 1e-5) < 0.01  # nearly every entry identical
    lab_exact, lab_approx = dbscan(exact, eps=0.6), dbscan(approx, eps=0.6)
    assert lab_exact.max() > 5
    assert adjusted_rand_score(lab_exact, lab_approx) >= 0.95
    assert adjusted_rand_score(ids, lab_exact) > 0.9


# --------------------------------------------------------------------------------------------
# knn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,k,chunk", [("gauss", 9, None), ("gauss", 40, 6), ("lattice", 25, 13)]
)
def test_knn_matches_brute_force(data, k, chunk):
    x, _ = {"gauss": _gauss, "lattice": _lattice}[data](70)
    if data == "lattice":
        x /= 4.0  # exact squared distances: multiples of 1/16
    idx, dst = knn(torch.from_numpy(x), k, chunk_size=chunk)
    assert idx.dtype == torch.int64 and dst.dtype == torch.float32 and idx.shape == (70, k)
    sq = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    for i in range(70):
        expected = sorted(range(70), key=lambda j, i=i: (j != i, round(sq[i, j], 9), j))[:k]
        assert idx[i].tolist() == expected
        np.testing.assert_allclose(dst[i].numpy(), sq[i, expected], atol=1e-5)
    assert torch.all(dst[:, 0] == 0)


def test_knn_clamps_k_and_approx_recall():
    x, _ = _gauss(30)
    idx, _ = knn(x, 100)
    assert idx.shape == (30, 30)
    assert sorted(idx[3].tolist()) == list(range(30)) and idx[3, 0] == 3
    assert knn(np.zeros((0, 4)), 5)[0].shape == (0, 0)
    with pytest.raises(ValueError):
        knn(x, 0)
    y, _ = _gauss(800, n_ids=40, dim=24, noise=0.5, seed=5)
    exact, _ = knn(y, 15)
    approx, adist = knn(y, 15, search="approx")
    assert torch.all(approx[:, 0] == torch.arange(800))
    assert torch.all(adist[:, 1:] >= adist[:, :-1])  # ordered nearest first
    recall = np.mean(
        [len(set(a) & set(e)) / 15 for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    )
    assert recall > 0.95


# --------------------------------------------------------------------------------------------
# DBSCAN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps,min_samples", [(0.6, 4), (0.3, 2), (0.5, 8)])
def test_dbscan_sparse_equals_dense(eps, min_samples):
    x, _ = _gauss(300, n_ids=12, dim=16, noise=0.9, seed=1)
    jac = jaccard_distance(x, k1=20, k2=6)
    dense = _dense(jac)
    labels = dbscan(jac, eps=eps, min_samples=min_samples)
    assert labels.dtype == np.int64
    sk = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)
    np.testing.assert_array_equal(labels, relabel(sk))
    np.testing.assert_array_equal(dbscan(dense, eps, min_samples), labels)
    np.testing.assert_array_equal(dbscan(torch.from_numpy(dense), eps, min_samples), labels)
    assert (labels == -1).any() and labels.max() >= 4  # several clusters, some outliers
    # numbered 0..K-1 in order of first appearance
    firsts = [labels[labels >= 0].tolist().index(c) for c in range(labels.max() + 1)]
    assert firsts == sorted(firsts)


def test_dbscan_degenerate_cases():
    x, _ = _gauss(60)
    jac = jaccard_distance(x, k1=10, k2=1)  # no query expansion: no two V rows are equal
    assert np.all(dbscan(jac, eps=1e-6, min_samples=2) == -1)  # all outliers
    blob, _ = _gauss(30, n_ids=1, noise=0.1)  # one tight identity: a single cluster
    assert np.all(dbscan(jaccard_distance(blob, k1=20, k2=3)) == 0)
    assert np.all(dbscan(jaccard_distance(x[:3], k1=5), min_samples=4) == -1)  # N < min_samples
    assert dbscan(sp.csr_matrix((0, 0), dtype=np.float32)).shape == (0,)
    assert dbscan(np.zeros((0, 0))).shape == (0,)
    assert dbscan(jaccard_distance(x[:1]), min_samples=1).tolist() == [0]
    assert dbscan(np.zeros((1, 1)), min_samples=2).tolist() == [-1]
    with pytest.raises(ValueError, match="eps"):
        dbscan(jac, eps=1.0)
    # missing diagonal in a user-given sparse matrix: a point is still its own neighbour
    m = sp.csr_matrix(np.array([[0, 0.1, 0], [0.1, 0, 0.2], [0, 0.2, 0]], dtype=np.float32))
    assert dbscan(m, eps=0.15, min_samples=2).tolist() == [0, 0, -1]


# --------------------------------------------------------------------------------------------
# Agglomerative clustering
# --------------------------------------------------------------------------------------------


def test_agglomerative_n_clusters_and_threshold():
    x, ids = _gauss(90, n_ids=5, noise=0.3, seed=2)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = 1.0 - xn @ xn.T
    np.fill_diagonal(dist, 0.0)
    dist = np.maximum(dist, 0.0)
    labels = agglomerative(dist, n_clusters=5)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(5))
    assert adjusted_rand_score(ids, labels) == pytest.approx(1.0)
    sk = AgglomerativeClustering(n_clusters=5, metric="precomputed", linkage="average")
    np.testing.assert_array_equal(labels, relabel(sk.fit_predict(dist)))
    by_threshold = agglomerative(torch.from_numpy(dist), distance_threshold=0.5)
    sk = AgglomerativeClustering(
        n_clusters=None, distance_threshold=0.5, metric="precomputed", linkage="average"
    )
    np.testing.assert_array_equal(by_threshold, relabel(sk.fit_predict(dist)))
    complete = agglomerative(dist, n_clusters=3, linkage="complete")
    assert complete.max() == 2
    with pytest.raises(ValueError):
        agglomerative(dist)
    with pytest.raises(ValueError):
        agglomerative(dist, n_clusters=2, distance_threshold=0.3)


def test_agglomerative_sparse_and_small():
    x, _ = _gauss(40, n_ids=4, noise=0.3)
    jac = jaccard_distance(x, k1=8, k2=3)
    np.testing.assert_array_equal(
        agglomerative(jac, n_clusters=4), agglomerative(_dense(jac), n_clusters=4)
    )
    with pytest.warns(UserWarning, match="n_clusters"):
        labels = agglomerative(np.zeros((3, 3)), n_clusters=10)
    assert sorted(labels.tolist()) == [0, 1, 2]
    with pytest.warns(UserWarning, match="n_clusters"):
        assert agglomerative(np.zeros((1, 1)), n_clusters=3).tolist() == [0]
    assert agglomerative(np.zeros((1, 1)), distance_threshold=0.1).tolist() == [0]


# --------------------------------------------------------------------------------------------
# relabel, cluster_centers
# --------------------------------------------------------------------------------------------


def test_relabel():
    out = relabel(np.array([7, 7, -1, 3, 9, 3, -1, 7, -5]))
    np.testing.assert_array_equal(out, [0, 0, -1, 1, 2, 1, -1, 0, -1])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(relabel(torch.tensor([2, 2, 0])), [0, 0, 1])
    np.testing.assert_array_equal(relabel([-1, -1]), [-1, -1])
    assert relabel(np.zeros(0, dtype=np.int64)).shape == (0,)


def test_cluster_centers_equal_loop():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(50, 6)).astype(np.float32))
    labels = rng.integers(-1, 5, 50)
    labels[:5] = np.arange(5)  # every cluster has a member
    centers = cluster_centers(feats, labels)
    assert centers.shape == (5, 6) and centers.dtype == torch.float32
    for k in range(5):
        np.testing.assert_allclose(centers[k].numpy(), feats[labels == k].mean(0).numpy(), 1e-6)
    assert cluster_centers(feats, np.full(50, -1)).shape == (0, 6)
    gap = cluster_centers(feats.double(), torch.tensor([0] * 25 + [2] * 25))
    assert gap.dtype == torch.float64 and torch.all(gap[1] == 0)
    np.testing.assert_allclose(gap[2].numpy(), feats[25:].double().mean(0).numpy())


def test_condensed_distances_ask_each_pair_once_and_match_squareform():
    from scipy.spatial.distance import squareform

    from reidlab.clustering import condensed_distances

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23, 5, generator=gen)
    full = torch.cdist(x, x)
    asked = []

    def rows(i0, i1, j0):
        asked.append((i0, i1, j0))
        return full[i0:i1, j0:]

    got = condensed_distances(23, rows, chunk_size=7)
    np.testing.assert_allclose(got, squareform(full.double().numpy(), checks=False), rtol=1e-6)
    assert asked == [(0, 7, 0), (7, 14, 7), (14, 21, 14), (21, 23, 21)]
