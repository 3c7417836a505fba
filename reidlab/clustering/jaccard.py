"""k-reciprocal Jaccard distance for clustering, as a sparse matrix (memory ~ N * k)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from reidlab.clustering.neighbors import as_features, knn, pair_sqdist
from reidlab.metrics.functional import k_reciprocal_vectors

# Row-chunk buffer of the pairwise-min accumulation (rows x N elements), and the most
# (row, row, column) triples generated at once.
_BUFFER_ELEMS = 1 << 23
_MAX_TRIPLES = 1 << 22


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
    column by column, over the pairs of rows having that column. Memory grows with ``N * k1``
    (times the query-expansion spread), never ``N * N``.

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
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    x = torch.nn.functional.normalize(as_features(features), dim=1)
    n = x.shape[0]
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    kmax = max(min(k1 + 1, n), min(k2, n))
    nbr, _ = knn(x, kmax, search=search, chunk_size=chunk_size, progress=progress)
    v = k_reciprocal_vectors(nbr, k1, k2, lambda i, j: pair_sqdist(x, i, j))
    return _jaccard_from_vectors(v, chunk_size, progress)


def _chunk_bounds(row_cum: Tensor, max_rows: int) -> list[tuple[int, int]]:
    """Row ranges with at most ``max_rows`` rows and (unless one row alone exceeds it)
    ``_MAX_TRIPLES`` triples; ``row_cum[i]`` = triples of the rows before ``i``."""
    n = row_cum.numel() - 1
    bounds, s = [], 0
    while s < n:
        limit = int(torch.searchsorted(row_cum, row_cum[s] + _MAX_TRIPLES, right=True)) - 1
        e = max(s + 1, min(limit, s + max_rows, n))
        bounds.append((s, e))
        s = e
    return bounds


def _jaccard_from_vectors(
    v: sp.csr_matrix, chunk_size: int | None, progress: bool
) -> sp.csr_matrix:
    """``J = 1 - s / (2 - s)`` for every pair of rows of ``v`` sharing a column."""
    n = v.shape[0]
    indptr = torch.from_numpy(v.indptr.astype(np.int64))
    cols = torch.from_numpy(v.indices.astype(np.int64))
    vals = torch.from_numpy(v.data.astype(np.float32))
    row = torch.repeat_interleave(torch.arange(n), indptr.diff())
    # Column-major (CSC) view of the entries: rows increase within a column.
    csc = torch.sort(cols, stable=True).indices
    colptr = torch.zeros(n + 1, dtype=torch.int64)
    colptr[1:] = torch.cumsum(torch.bincount(cols, minlength=n), 0)
    csc_rows, csc_vals = row[csc], vals[csc]
    pos = torch.empty_like(csc)
    pos[csc] = torch.arange(csc.numel())
    # Entry (i, l) pairs with the entries of column l in rows after i (upper triangle only).
    later = colptr[cols + 1] - pos - 1
    cum = torch.zeros(later.numel() + 1, dtype=torch.int64)
    cum[1:] = torch.cumsum(later, 0)
    bounds = _chunk_bounds(cum[indptr], chunk_size or max(1, _BUFFER_ELEMS // n))

    buf = torch.zeros(max(e - s for s, e in bounds) * n, dtype=torch.float32)
    owner = torch.full(buf.shape, -1, dtype=torch.int64)
    out_i, out_j, out_s = [], [], []
    with tqdm(total=n, desc="jaccard", disable=not progress) as bar:
        for s, e in bounds:
            a, b = int(indptr[s]), int(indptr[e])
            cnt, first = later[a:b], int(cum[a])
            total = int(cum[b]) - first
            tid = torch.arange(first, first + total)  # global triple ids
            jpos = tid + torch.repeat_interleave(pos[a:b] + 1 - cum[a:b], cnt)
            key = torch.repeat_interleave(row[a:b] - s, cnt) * n + csc_rows[jpos]
            vmin = torch.minimum(torch.repeat_interleave(vals[a:b], cnt), csc_vals[jpos])
            buf.index_add_(0, key, vmin)
            # One representative per (i, j) pair: the last triple writing its id wins.
            owner[key] = tid
            ukey = torch.sort(key[owner[key] == tid]).values
            out_s.append(buf[ukey])
            buf[ukey] = 0.0
            out_i.append(ukey // n + s)
            out_j.append(ukey % n)
            bar.update(e - s)
    s_min = torch.cat(out_s)
    jac = (1.0 - s_min / (2.0 - s_min)).clamp_(0.0, 1.0)
    return _symmetric_csr(n, torch.cat(out_i), torch.cat(out_j), jac)


def _symmetric_csr(n: int, ui: Tensor, uj: Tensor, uval: Tensor) -> sp.csr_matrix:
    """CSR of ``U + U^T + 0 * I`` from the strict upper triangle ``U`` (sorted row-major),
    built index by index so that no zero is dropped."""
    n_up = torch.bincount(ui, minlength=n)
    n_lo = torch.bincount(uj, minlength=n)
    indptr = torch.zeros(n + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(n_lo + 1 + n_up, 0)
    total = int(indptr[-1])
    idx_dtype = torch.int32 if total < 2**31 - 1 else torch.int64
    indices = torch.empty(total, dtype=idx_dtype)
    data = torch.empty(total, dtype=torch.float32)
    m = torch.arange(ui.numel())
    # Row i: [lower entries (columns < i), diagonal, upper entries (columns > i)].
    up_start = torch.cumsum(n_up, 0) - n_up
    dest = indptr[ui] + n_lo[ui] + 1 + (m - up_start[ui])
    indices[dest], data[dest] = uj.to(idx_dtype), uval
    lo = torch.sort(uj, stable=True).indices  # U^T row-major: by column, then row
    lo_start = torch.cumsum(n_lo, 0) - n_lo
    lrow = uj[lo]
    dest = indptr[lrow] + (m - lo_start[lrow])
    indices[dest], data[dest] = ui[lo].to(idx_dtype), uval[lo]
    diag = torch.arange(n)
    dest = indptr[:-1] + n_lo
    indices[dest], data[dest] = diag.to(idx_dtype), 0.0
    return sp.csr_matrix(
        (data.numpy(), indices.numpy(), indptr.to(idx_dtype).numpy()), shape=(n, n)
    )
