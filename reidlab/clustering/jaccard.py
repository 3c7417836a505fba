"""k-reciprocal Jaccard distance for clustering, as a sparse matrix (memory ~ N * k)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from reidlab.clustering.neighbors import as_features, knn, pair_sqdist
from reidlab.clustering.reciprocal import k_reciprocal_vectors

# Pair-sum buffer of one row chunk (rows x N) and the most (row, row, column) triples
# generated at once. Chunks are kept small so that their temporaries are recycled by the
# allocator (mapping fresh pages is costly).
_BUFFER_ELEMS = 1 << 22
_MAX_TRIPLES = 1 << 18
# A chunk with at least this many triples per buffer element finds its pairs by scanning the
# buffer rather than by deduplicating and sorting its keys.
_SCAN_FRACTION = 0.5


def jaccard_distance(
    features: Tensor | np.ndarray,
    k1: int = 30,
    k2: int = 6,
    search: str = "exact",
    chunk_size: int | None = None,
    progress: bool = False,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance between all pairs of ``features`` (Zhong et al. 2017,
    eq. 7-11, as used for pseudo-labelling by SpCL / MMT / SBase).

    On L2-normalised features with ``d_ij = 2 - 2 x_i.x_j``: ``R(i, k)`` = the ``k + 1``
    nearest neighbours of ``i``, itself included (ties by index); ``R*(i, k) = {j in R(i, k) :
    i in R(j, k)}``; ``R*(i, k1)`` is expanded by every ``R*(j, round(k1/2))``, ``j`` in
    ``R*(i, k1)``, sharing more than 2/3 of its members with it (round half to even);
    ``V_i`` = softmax of ``-d_ij`` over the expanded set (0 elsewhere); local query expansion
    ``V_i <- mean of V_j`` over the ``k2`` nearest neighbours of ``i`` (itself included;
    ``k2 = 1`` disables it); ``J_ij = 1 - sum_l min(V_il, V_jl) / sum_l max(V_il, V_jl)``.

    Rows of ``V`` sum to 1, so ``J = 1 - s / (2 - s)`` with ``s = sum_l min(V_il, V_jl)``,
    which is non-zero only for pairs sharing a column of ``V``: ``s`` is accumulated sparsely,
    column by column, over the pairs of rows having that column. The result holds one entry
    (8 bytes) per such pair: N times a data-dependent count bounded by the sizes of the V rows
    and columns (a few hundred per row on well-clustered features, up to ~9,000 on
    low-contrast ones; see docs/benchmarks.md), never N x N. The sparse steps run on one torch
    thread (they are memory-bound; on a loaded machine a second thread made them slower).

    Args:
        features: Array or tensor (N, D); used as float32 on the CPU.
        k1: Size of the k-reciprocal neighbourhood.
        k2: Size of the local query expansion.
        search: Neighbour search, ``"exact"`` or ``"approx"`` (see :func:`knn`); one search
            for ``max(k1 + 1, k2)`` neighbours.
        chunk_size: Rows per chunk in the neighbour search and the pair accumulation
            (``None``: automatic).
        progress: Show progress bars.

    Returns:
        Symmetric N x N float32 CSR matrix (sorted indices) holding every ``J_ij < 1`` and an
        explicit zero diagonal; absent entries mean ``J = 1``. Explicit zeros (identical
        ``V`` rows) are kept.
    """
    return _jaccard(features, k1, k2, search, chunk_size, progress, lambda_value=None)


def reranked_distance(
    features: Tensor | np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    search: str = "exact",
    chunk_size: int | None = None,
    progress: bool = False,
) -> sp.csr_matrix:
    """k-reciprocal re-ranked distance between all pairs of ``features`` (Zhong et al. 2017,
    the full formula of their reference code), for clustering (DG-Net++'s pseudo-labels).

    As :func:`reidlab.metrics.re_ranking` on the cosine distance ``D = 1 - x_i.x_j`` of the
    L2-normalised features: working distance ``d(i, j) = D_ij^2 / max_l D_il^2``, ``V_i`` =
    softmax of ``-d(i, .)`` over the expanded k-reciprocal set, local query expansion, and
    ``(1 - lambda) J_ij + lambda d(i, j)`` with the Jaccard distance ``J`` of
    :func:`jaccard_distance`. The ranking, hence every neighbour set, equals that of
    :func:`jaccard_distance`; the V weights and the added original term differ.

    Only pairs sharing a column of ``V`` (``J < 1``) are stored: every missing pair has a
    distance of at least ``1 - lambda``, so a DBSCAN with ``eps < 1 - lambda`` on this matrix
    equals one on the dense matrix. ``d`` is normalised per row, so the matrix is not
    symmetric (row ``i`` is the neighbourhood of ``i``, as in the reference). The row maxima
    take one chunked pass over all pairs (N^2 D operations, N memory).

    Returns:
        N x N float32 CSR matrix (sorted indices) with an explicit zero diagonal.
    """
    if not 0.0 <= lambda_value < 1.0:
        raise ValueError(f"lambda_value must be in [0, 1), got {lambda_value}")
    return _jaccard(features, k1, k2, search, chunk_size, progress, lambda_value=lambda_value)


def _jaccard(features, k1: int, k2: int, search: str, chunk_size: int | None, progress: bool,
             lambda_value: float | None) -> sp.csr_matrix:
    """:func:`jaccard_distance` (``lambda_value`` None) or :func:`reranked_distance`."""
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    x = torch.nn.functional.normalize(as_features(features), dim=1)
    n = x.shape[0]
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    kmax = max(min(k1 + 1, n), min(k2, n))
    nbr, nbr_dist = knn(x, kmax, search=search, chunk_size=chunk_size, progress=progress)
    dist = _distance_lookup(x, nbr, nbr_dist)  # 2 - 2 x_i.x_j = 2 D_ij
    if lambda_value is not None:  # Zhong's working distance D^2 / rowmax D^2 (scale-free)
        row_max = _row_max_sqdist(x, chunk_size).pow(2)
        sq_dist = dist

        def dist(rows: Tensor, cols: Tensor) -> Tensor:
            return sq_dist(rows, cols).pow(2) / row_max[rows]

    with _one_thread():
        v = k_reciprocal_vectors(nbr, k1, k2, dist)
        del nbr, nbr_dist  # not needed for the pair sums, which hold the largest memory
        jac = _jaccard_from_vectors(v, chunk_size, progress)
    if lambda_value is None:
        return jac
    rows = torch.from_numpy(np.repeat(np.arange(n), np.diff(jac.indptr)))
    cols = torch.from_numpy(jac.indices.astype(np.int64))
    jac.data = ((1 - lambda_value) * torch.from_numpy(jac.data)
                + lambda_value * dist(rows, cols)).numpy()
    jac.setdiag(0.0)  # the diagonal exactly (an explicit zero: kept)
    return jac


def _row_max_sqdist(x: Tensor, chunk_size: int | None) -> Tensor:
    """``max_j (2 - 2 x_i.x_j)`` for every row of the unit-norm ``x`` (1 where all are 0)."""
    n = x.shape[0]
    step = chunk_size or max(1, _BUFFER_ELEMS // max(n, 1))
    out = torch.empty(n, dtype=torch.float32)
    for s in range(0, n, step):
        out[s : s + step] = (2.0 - 2.0 * (x[s : s + step] @ x.T).amin(1)).clamp_min_(0.0)
    return torch.where(out > 0, out, torch.ones_like(out))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread. The sparse steps are many small memory-bound
    ops: a second thread gains little, and on a loaded machine the per-op synchronisation of
    the threads made them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _distance_lookup(
    x: Tensor, nbr: Tensor, nbr_dist: Tensor
) -> Callable[[Tensor, Tensor], Tensor]:
    """``d(rows, cols)``: taken from the neighbour table where the pair is in it (most pairs of
    the expanded sets), computed from the features otherwise."""
    n = x.shape[0]
    cols, order = torch.sort(nbr, dim=1)
    keys = (torch.arange(n)[:, None] * n + cols).reshape(-1)  # sorted
    table = nbr_dist.gather(1, order).reshape(-1)

    def dist(rows: Tensor, cols: Tensor) -> Tensor:
        q = rows * n + cols
        at = torch.searchsorted(keys, q).clamp_max_(keys.numel() - 1)
        hit = keys[at] == q
        out = torch.where(hit, table[at], 0.0)
        miss = (~hit).nonzero().flatten()
        out[miss] = pair_sqdist(x, rows[miss], cols[miss])
        return out

    return dist


def _chunk_bounds(row_cum: Tensor, max_rows: int | None) -> list[tuple[int, int]]:
    """Row ranges ``[s, e)`` with at most ``_MAX_TRIPLES`` triples and ``(e - s) * N <=
    _BUFFER_ELEMS`` (both unless one row alone exceeds them) and ``e - s <= max_rows``;
    ``row_cum[i]`` = triples of the rows before ``i``."""
    n = row_cum.numel() - 1
    bounds, s = [], 0
    while s < n:
        e = int(torch.searchsorted(row_cum, row_cum[s] + _MAX_TRIPLES, right=True)) - 1
        e = min(e, s + _BUFFER_ELEMS // n, s + (max_rows or n), n)
        bounds.append((s, max(e, s + 1)))
        s = bounds[-1][1]
    return bounds


def _jaccard_from_vectors(
    v: sp.csr_matrix, chunk_size: int | None, progress: bool
) -> sp.csr_matrix:
    """``J = 1 - s / (2 - s)``, ``s = sum_l min(V_il, V_jl)``, for every pair of rows of ``v``
    sharing a column, as a CSR matrix built row chunk by row chunk.

    Each entry ``(i, l)`` is paired with every entry ``(j, l)`` of its column (triples
    ``(i, j, min)``, ``i`` itself included: the diagonal); a chunk of rows sums its triples in
    a rows x N buffer and finds its pairs, in CSR order, by scanning the buffer when the chunk
    has many triples, else by keeping one key per pair (the last triple to claim it) and
    sorting those: the cost follows the number of triples, not N^2. Both ``(i, j)`` and
    ``(j, i)`` are summed over the shared columns in increasing ``l``, in one thread, so the
    result is exactly symmetric.
    """
    n = v.shape[0]
    indptr = torch.from_numpy(v.indptr.astype(np.int64))
    cols = torch.from_numpy(v.indices.astype(np.int64))
    vals = torch.from_numpy(v.data.astype(np.float32))
    row = torch.repeat_interleave(torch.arange(n), indptr.diff())
    # Column-major (CSC) view of the entries: rows increase within a column.
    csc = torch.sort(cols, stable=True).indices
    col_count = torch.bincount(cols, minlength=n)
    colptr = torch.cumsum(col_count, 0) - col_count
    csc_rows, csc_vals = row[csc], vals[csc]
    per_entry = col_count[cols]  # triples of each entry
    cum = torch.zeros(cols.numel() + 1, dtype=torch.int64)
    cum[1:] = torch.cumsum(per_entry, 0)
    skip = colptr[cols] - cum[:-1]  # triple t of entry e pairs it with CSC position t + skip[e]
    bounds = _chunk_bounds(cum[indptr], chunk_size)
    del cols, csc, colptr, col_count

    buf = torch.zeros(max(e - s for s, e in bounds) * n, dtype=torch.float32)
    owner = torch.full(buf.shape, -1, dtype=torch.int64)  # triple ids only grow: no reset
    # Result arrays: at most one entry per triple. Only the used part of this reservation is
    # touched, and it is shrunk in place at the end (no copy).
    indices = np.empty(int(cum[-1]), dtype=np.int32)
    data = np.empty(int(cum[-1]), dtype=np.float32)
    idx_t, val_t = torch.from_numpy(indices), torch.from_numpy(data)
    counts, m = torch.zeros(n, dtype=torch.int64), 0
    with tqdm(total=n, desc="jaccard", disable=not progress) as bar:
        for s, e in bounds:
            a, b = int(indptr[s]), int(indptr[e])
            tid = torch.arange(int(cum[a]), int(cum[b]))
            ent = torch.repeat_interleave(torch.arange(b - a), per_entry[a:b])
            jpos = tid + skip[a:b][ent]
            key = ((row[a:b] - s) * n)[ent] + csc_rows[jpos]  # (i - s) * N + j
            buf.index_add_(0, key, torch.minimum(vals[a:b][ent], csc_vals[jpos]))
            if key.numel() >= _SCAN_FRACTION * (e - s) * n:  # dense chunk: scan the buffer
                key = buf[: (e - s) * n].nonzero().flatten()
            else:  # one key per pair: the last triple to claim it, then sorted
                owner[key] = tid
                key = torch.sort(key[owner[key] == tid]).values
            s_min = buf[key]
            buf[key] = 0.0
            r = key // n
            jac = val_t[m : m + key.numel()]
            torch.div(s_min, s_min.neg().add_(2.0), out=jac)
            jac.neg_().add_(1.0).clamp_(0.0, 1.0)  # J = 1 - s / (2 - s)
            idx_t[m : m + key.numel()] = key - r * n
            jac[r + s == idx_t[m : m + key.numel()]] = 0.0  # the diagonal, exactly
            counts[s:e] = torch.bincount(r, minlength=e - s)
            m += key.numel()
            bar.update(e - s)
    del idx_t, val_t, jac  # no view may outlive the in-place resize
    indices.resize(m, refcheck=False)
    data.resize(m, refcheck=False)
    out_ptr = np.zeros(n + 1, dtype=np.int64)
    out_ptr[1:] = np.cumsum(counts.numpy())
    idx_dtype = np.int32 if m < 2**31 else np.int64
    out = sp.csr_matrix(
        (data, indices.astype(idx_dtype, copy=False), out_ptr.astype(idx_dtype)), shape=(n, n)
    )
    out.has_sorted_indices = True
    return out
