"""k-reciprocal encoding (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017): the sparse vectors V behind both k-reciprocal re-ranking and the
k-reciprocal Jaccard distance used for clustering."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def _reciprocal_mask(nbr: Tensor, k: int, step: int) -> Tensor:
    """``R[i, p]``: is ``nbr[i, p]`` (p < k) a k-reciprocal neighbour of ``i``.

    ``j`` in ``N(i, k)`` and ``i`` in ``N(j, k)`` where ``N(i, k)`` are the first ``k`` entries of
    row ``i`` of the ranking (the paper's k-nearest set including ``i`` itself, k = k1 + 1).
    """
    n = nbr.shape[0]
    out = torch.empty((n, k), dtype=torch.bool, device=nbr.device)
    for s in range(0, n, step):
        fwd = nbr[s : s + step, :k]
        back = nbr[:, :k][fwd]  # (c, k, k)
        me = torch.arange(s, s + fwd.shape[0], device=nbr.device)[:, None, None]
        out[s : s + step] = (back == me).any(-1)
    return out


def k_reciprocal_vectors(
    nbr: Tensor, k1: int, k2: int, dist: Callable[[Tensor, Tensor], Tensor]
) -> sp.csr_matrix:
    """Sparse k-reciprocal feature vectors ``V`` (Zhong et al. 2017, eq. 7-11 with expansion).

    ``R(i, k)`` = the first ``k + 1`` entries of row ``i`` of ``nbr`` (its ranking, ``i``
    itself normally first) and ``R*(i, k) = {j in R(i, k) : i in R(j, k)}``. ``R*(i, k1)`` is
    expanded by every ``R*(c, round(k1/2))``, ``c`` in ``R*(i, k1)``, sharing more than 2/3 of
    its members with it; ``V[i, j] = exp(-d(i, j))`` on the expanded set, normalised to sum 1
    (a softmax of ``-d``); then local query expansion ``V_i <- mean of V_j`` over the first
    ``k2`` entries of row ``i`` of ``nbr`` (``k2 = 1`` disables it).

    Shared by :func:`reidlab.metrics.re_ranking` (``d`` = its working distance) and
    :func:`reidlab.clustering.jaccard_distance` (``d = 2 - 2 x_i.x_j``).

    Args:
        nbr: CPU int64 rankings, shape (N, kmax) with ``kmax >= max(min(k1 + 1, N),
            min(k2, N))``, nearest first.
        k1: Size of the k-reciprocal neighbourhood.
        k2: Size of the local query expansion.
        dist: ``dist(rows, cols)`` -> float32 distances ``d(rows[t], cols[t])``.

    Returns:
        ``V`` as an N x N float32 CSR matrix with sorted indices; every row sums to 1.
    """
    n = nbr.shape[0]
    kk1 = min(k1 + 1, n)
    kkh = min(int(np.around(k1 / 2.0)) + 1, n)
    kk2 = min(k2, n)
    if nbr.shape[1] < max(kk1, kk2):
        raise ValueError(f"nbr has {nbr.shape[1]} columns, need {max(kk1, kk2)}")
    dev = torch.device("cpu")  # V is a scipy matrix

    # k-reciprocal sets R(i, k1) and R(i, round(k1 / 2)).
    rstep = max(1, (1 << 22) // (kk1 * kk1))
    r1 = _reciprocal_mask(nbr, kk1, rstep)
    rh = _reciprocal_mask(nbr, kkh, rstep)

    # Expansion: add R(c, k1/2) for each c in R(i, k1) with |R(c, k1/2) & R(i, k1)| >
    # 2/3 |R(c, k1/2)|, then weights exp(-d(i, j)) normalised to sum 1.
    indptr = [torch.zeros(1, dtype=torch.int64, device=dev)]
    indices, data = [], []
    estep = max(1, min((1 << 19) // (kk1 * kkh), (1 << 24) // n))
    member = torch.zeros((estep, n), dtype=torch.bool)  # member[i - s, j]: j in R(i, k1)
    for s in range(0, n, estep):
        e = min(s + estep, n)
        cand = nbr[s:e, :kk1]  # (c, kk1)
        cmask = r1[s:e]
        csets = nbr[:, :kkh][cand]  # (c, kk1, kkh)
        csmask = rh[cand]
        rr, pp = cmask.nonzero(as_tuple=True)
        member[rr, cand[rr, pp]] = True
        inter = (member[torch.arange(e - s)[:, None, None], csets] & csmask).sum(-1)
        member[rr, cand[rr, pp]] = False
        size = csmask.sum(-1)
        accept = cmask & (inter.to(torch.float64) > (2.0 / 3.0) * size.to(torch.float64))
        members = torch.cat(
            [
                torch.where(cmask, cand, n),
                torch.where(csmask & accept[..., None], csets, n).flatten(1),
            ],
            1,
        )
        members = torch.sort(members, dim=1).values
        keep = members < n
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        rows, pos = keep.nonzero(as_tuple=True)
        cols = members[rows, pos]
        rows = rows + s
        w = torch.exp(-dist(rows, cols))
        wsum = torch.zeros(e - s, dtype=w.dtype, device=dev).index_add_(0, rows - s, w)
        data.append(w / wsum[rows - s])
        indices.append(cols)
        indptr.append(keep.sum(1))
    indptr_np = torch.cumsum(torch.cat(indptr), 0).cpu().numpy()
    v = sp.csr_matrix(
        (torch.cat(data).cpu().numpy(), torch.cat(indices).cpu().numpy(), indptr_np),
        shape=(n, n),
    )
    # Local query expansion: V_i <- mean of V over the k2 nearest rows of i.
    if k2 != 1:
        sel_cols = nbr[:, :kk2].reshape(-1).cpu().numpy()
        sel = sp.csr_matrix(
            (
                np.ones(sel_cols.size, dtype=np.float32),
                sel_cols,
                np.arange(0, sel_cols.size + 1, kk2),
            ),
            shape=(n, n),
        )
        v = sel @ v
        v.data /= np.float32(kk2)
        v.sort_indices()
    return v
