"""k-nearest-neighbour search on features: exact (chunked matrix products) or approximate.

Distances are squared euclidean, ``d_ij = |x_i - x_j|^2`` (``= 2 - 2 x_i.x_j`` on L2-normalised
features). Every point is its own first neighbour; the others follow by increasing distance,
exact ties broken by increasing index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

# Distance-matrix elements per chunk of the exact search (rows x N).
_CHUNK_ELEMS = 1 << 24
# Random-projection trees initialising NN-descent. pynndescent's default (at most 12) left
# whole neighbourhoods unfound in 2048-d: recall@31 0.89 at N = 100k on the benchmark
# features, 0.975 with 32 trees, 0.992 with 64 (NN-descent 62 s -> 106 s).
_NN_TREES = 64
# Pairs per chunk when computing distances of (row, col) pairs: small enough that the
# gathered rows are recycled by the allocator instead of being mapped afresh every chunk.
_PAIR_CHUNK = 512


def as_features(features: Tensor | np.ndarray) -> Tensor:
    """``features`` as a contiguous float32 CPU tensor of shape (N, D)."""
    x = features.detach() if isinstance(features, Tensor) else torch.as_tensor(features)
    x = x.to(device="cpu", dtype=torch.float32).contiguous()
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(x.shape)}")
    return x


def pair_sqdist(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``|x[rows[t]] - x[cols[t]]|^2`` for every pair ``t`` (float32)."""
    out = torch.empty(rows.shape, dtype=torch.float32)
    xr = torch.empty((_PAIR_CHUNK, x.shape[1]), dtype=x.dtype)
    xc = torch.empty_like(xr)
    for s in range(0, rows.numel(), _PAIR_CHUNK):
        m = min(_PAIR_CHUNK, rows.numel() - s)
        torch.index_select(x, 0, rows[s : s + m], out=xr[:m])
        torch.index_select(x, 0, cols[s : s + m], out=xc[:m])
        out[s : s + m] = xr[:m].sub_(xc[:m]).square_().sum(1)
    return out


def _order_by_distance(cols: Tensor, vals: Tensor) -> tuple[Tensor, Tensor]:
    """Sort every row of (cols, vals) by value, ties by column index."""
    o = cols.argsort(dim=1)
    cols, vals = cols.gather(1, o), vals.gather(1, o)
    o = vals.argsort(dim=1, stable=True)
    return cols.gather(1, o), vals.gather(1, o)


def _smallest(d: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Columns and values of the ``k`` smallest entries of every row of ``d``, ordered by
    (value, column); a tie at the k-th place goes to the smallest columns."""
    n = d.shape[1]
    if k >= n:
        vals, cols = torch.sort(d, dim=1, stable=True)
        return cols, vals
    vals, cols = torch.topk(d, k + 1, dim=1, largest=False, sorted=True)
    tied = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
    vals, cols = vals[:, :k].clone(), cols[:, :k].clone()
    if tied.numel():
        dt = d[tied]
        t = vals[tied, k - 1, None]
        below, equal = dt < t, dt == t
        need = k - below.sum(1, keepdim=True)
        take = below | (equal & (equal.cumsum(1) <= need))
        r, c = take.nonzero(as_tuple=True)  # exactly k per row, columns increasing
        cols[tied] = c.view(-1, k)
        vals[tied] = dt[r, c].view(-1, k)
    return _order_by_distance(cols, vals)


def _exact_knn(
    x: Tensor, k: int, rows: Tensor, chunk_size: int | None, progress: bool
) -> tuple[Tensor, Tensor]:
    """Exact neighbours of ``x[rows]`` among all of ``x``: one matrix product and top-k per
    chunk of rows (about 16M distances per chunk unless ``chunk_size`` is given)."""
    n = x.shape[0]
    sq = x.pow(2).sum(1)
    step = chunk_size or max(1, _CHUNK_ELEMS // max(n, 1))
    idx = torch.empty((rows.numel(), k), dtype=torch.int64)
    dst = torch.empty((rows.numel(), k), dtype=torch.float32)
    buf = torch.empty(min(step, rows.numel()) * n, dtype=torch.float32)  # reused per chunk
    with tqdm(total=rows.numel(), desc="knn (exact)", disable=not progress) as bar:
        for s in range(0, rows.numel(), step):
            q = rows[s : s + step]
            d = buf[: q.numel() * n].view(q.numel(), n)
            torch.addmm(sq[None, :], x[q], x.T, alpha=-2.0, out=d)
            d.add_(sq[q, None]).clamp_min_(0)
            d[torch.arange(q.numel()), q] = -1.0  # self first
            idx[s : s + step], dst[s : s + step] = _smallest(d, k)
            bar.update(q.numel())
    dst[:, 0] = 0.0
    return idx, dst


def _approx_knn(x: Tensor, k: int, progress: bool) -> tuple[Tensor, Tensor]:
    """NN-descent candidates (pynndescent), distances recomputed exactly and re-ordered."""
    from pynndescent import NNDescent

    n = x.shape[0]
    index = NNDescent(
        x.numpy(),
        metric="euclidean",
        n_neighbors=k,
        n_trees=_NN_TREES,
        random_state=0,
        n_jobs=max(1, torch.get_num_threads()),
        verbose=progress,
    )
    cand = torch.from_numpy(index.neighbor_graph[0].astype(np.int64))
    me = torch.arange(n)[:, None]
    cand = torch.cat([me, cand], 1)
    bad = (cand < 0) | (cand == me)
    bad[:, 0] = False
    rr = me.expand_as(cand)
    d = pair_sqdist(x, rr.reshape(-1), cand.clamp_min(0).reshape(-1)).view(n, -1)
    d[:, 0] = -1.0  # self first
    d[bad] = torch.inf
    cand[bad] = n  # sorts after every valid index among the (infinite) padding
    idx, dst = _order_by_distance(cand, d)
    idx, dst = idx[:, :k].contiguous(), dst[:, :k].contiguous()
    dst[:, 0] = 0.0
    # Rows where NN-descent found too few neighbours: exact search for those rows.
    short = torch.isinf(dst).any(1).nonzero().flatten()
    if short.numel():
        idx[short], dst[short] = _exact_knn(x, k, short, None, False)
    return idx, dst


def knn(
    features: Tensor | np.ndarray,
    k: int,
    search: str = "exact",
    chunk_size: int | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest neighbours of every row of ``features`` (squared euclidean).

    ``search="exact"``: chunked matrix products ``|x|^2 + |y|^2 - 2 x.y`` with ``torch.topk``
    (never an N x N matrix): O(N^2 D) time, deterministic.

    ``search="approx"``: NN-descent (pynndescent; fixed ``random_state``, ``n_jobs`` = torch's
    thread count) proposes the neighbours, whose distances are then recomputed and ordered as
    in the exact search; rows left with too few candidates fall back to the exact search.
    Roughly O(N k^2 D) work per NN-descent iteration instead of O(N^2 D), plus a one-off
    numba compilation (~30 s per process). The price is recall, which depends on the data:
    0.99 at N = 100k on the clustered benchmark features (64 initialisation trees), but 0.76
    at N = 32k on low-contrast features whose neighbours beyond the own identity are nearly
    equidistant (64 neighbours or 24 trees only reached 0.87 there). Results also depend on
    pynndescent's version. Check the agreement with the exact search on a sample of your
    data before relying on it.

    Args:
        features: Array or tensor (N, D); used as float32 on the CPU.
        k: Neighbours per point, the point itself included (clamped to N).
        search: ``"exact"`` or ``"approx"``.
        chunk_size: Rows per matrix product in the exact search (``None``: ~16M distances).
        progress: Show a progress bar.

    Returns:
        ``(indices, distances)``, int64 and float32 tensors of shape (N, min(k, N)); row ``i``
        starts with ``i`` itself (distance 0), then by increasing distance and index.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if search not in ("exact", "approx"):
        raise ValueError(f"search must be 'exact' or 'approx', got {search!r}")
    x = as_features(features)
    n = x.shape[0]
    k = min(k, n)
    if n == 0:
        return torch.empty((0, 0), dtype=torch.int64), torch.empty((0, 0))
    if search == "approx" and k < n:
        return _approx_knn(x, k, progress)
    return _exact_knn(x, k, torch.arange(n), chunk_size, progress)
