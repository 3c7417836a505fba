"""Retrieval evaluation (CMC, mAP, mINP), pairwise distances and k-reciprocal re-ranking.

Everything here works in bounded memory: evaluation is chunked over queries, distances can be
computed chunk by chunk from features, and re-ranking keeps sparse neighbour structures whose
size grows with ``N * k1`` (plus the ``q x g`` output, which the streaming entry points avoid).

Protocol (Market-1501, as ``eval_market1501`` in torchreid): for every query the gallery items
with the same identity *and* the same camera are removed; a query left without any true match is
skipped (it counts in neither CMC nor mAP); AP is computed over the whole filtered ranking.
Ties in distance are broken by gallery index (a stable sort).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from reidlab.clustering.reciprocal import k_reciprocal_vectors

ArrayLike = np.ndarray | Tensor | Sequence
Metric = Literal["euclidean", "sqeuclidean", "cosine"]

__all__ = [
    "pairwise_distance",
    "evaluate_rank",
    "evaluate_from_features",
    "re_ranking",
    "iter_re_ranked",
    "iter_re_ranked_features",
    "re_ranking_features",
]

# Number of distance-matrix elements processed at once (rows x columns of one chunk).
_CHUNK_ELEMS = 1 << 24


def _as_tensor(x: ArrayLike) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def _as_ids(x: ArrayLike, device: torch.device) -> Tensor:
    return _as_tensor(x).reshape(-1).to(device=device, dtype=torch.int64)


def _rows_per_chunk(n_cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    return max(1, _CHUNK_ELEMS // max(n_cols, 1))


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def _prepare_features(x: ArrayLike, metric: str) -> Tensor:
    t = _as_tensor(x)
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if metric == "cosine":
        t = torch.nn.functional.normalize(t, dim=1)
    elif metric not in ("euclidean", "sqeuclidean"):
        raise ValueError(f"unknown metric {metric!r}; use 'euclidean', 'sqeuclidean' or 'cosine'")
    return t


def _dist_block(xb: Tensor, y: Tensor, y_sq: Tensor | None, metric: str) -> Tensor:
    """Distances between the rows of ``xb`` and ``y`` (features already prepared)."""
    if metric == "cosine":
        # d(x, y) = 1 - <x, y> / (|x| |y|), rows already unit-normalised.
        return torch.addmm(
            torch.ones((), dtype=xb.dtype, device=xb.device), xb, y.T, alpha=-1.0
        ).clamp_min_(0.0)
    # |x - y|^2 = |x|^2 + |y|^2 - 2 <x, y>
    x_sq = xb.pow(2).sum(1, keepdim=True)
    d = torch.addmm(y_sq.unsqueeze(0), xb, y.T, alpha=-2.0).add_(x_sq).clamp_min_(0.0)
    return d.sqrt_() if metric == "euclidean" else d


def pairwise_distance(
    x: ArrayLike, y: ArrayLike, metric: Metric = "euclidean", chunk_size: int | None = None
) -> Tensor:
    """Pairwise distance matrix between the rows of ``x`` (m x d) and ``y`` (n x d).

    * ``"sqeuclidean"``: ``d = |x|^2 + |y|^2 - 2 x.y`` (negatives from rounding clamped to 0),
    * ``"euclidean"``: the square root of that,
    * ``"cosine"``: ``d = 1 - x.y / (|x| |y|)`` (clamped at 0).

    Args:
        x: Features, shape (m, d).
        y: Features, shape (n, d).
        metric: Distance to compute.
        chunk_size: Rows of ``x`` per matrix product (``None``: automatic).

    Returns:
        Float tensor of shape (m, n) on the device of ``x``.
    """
    xt = _prepare_features(x, metric)
    yt = _prepare_features(y, metric).to(device=xt.device, dtype=xt.dtype)
    y_sq = None if metric == "cosine" else yt.pow(2).sum(1)
    step = _rows_per_chunk(yt.shape[0], chunk_size)
    out = torch.empty((xt.shape[0], yt.shape[0]), dtype=xt.dtype, device=xt.device)
    for s in range(0, xt.shape[0], step):
        out[s : s + step] = _dist_block(xt[s : s + step], yt, y_sq, metric)
    return out


# --------------------------------------------------------------------------------------------
# Rank evaluation
# --------------------------------------------------------------------------------------------


class _RankAccumulator:
    """Accumulates CMC counts, sum of AP and sum of INP over query chunks.

    The gallery is indexed by identity once, so the true matches and the removed
    (same pid, same camera) items of a query are found without a q x g comparison.
    """

    def __init__(self, max_rank: int, g_pids: Tensor, g_cam: Tensor) -> None:
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.max_rank = max_rank
        self.cmc_counts = np.zeros(max_rank, dtype=np.int64)
        self.ap_sum = 0.0
        self.inp_sum = 0.0
        self.num_valid = 0
        self.g_pids, self.g_cam = g_pids, g_cam
        self.g_order = torch.argsort(g_pids, stable=True)
        self.uniq, self.counts = torch.unique_consecutive(g_pids[self.g_order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def _same_pid_pairs(self, q_pids: Tensor) -> tuple[Tensor, Tensor]:
        """(row, gallery index) of every gallery item sharing the query's pid, row-major."""
        dev = q_pids.device
        if self.uniq.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64, device=dev)
            return empty, empty
        pos = torch.searchsorted(self.uniq, q_pids).clamp_(max=self.uniq.numel() - 1)
        cnt = torch.where(self.uniq[pos] == q_pids, self.counts[pos], 0)
        rows = torch.repeat_interleave(torch.arange(q_pids.numel(), device=dev), cnt)
        offs = torch.arange(rows.numel(), device=dev) - torch.repeat_interleave(
            torch.cumsum(cnt, 0) - cnt, cnt
        )
        cols = self.g_order[torch.repeat_interleave(self.starts[pos], cnt) + offs]
        return rows, cols

    def add(self, dist: Tensor, q_pids: Tensor, q_cam: Tensor) -> None:
        rows, cols = self._same_pid_pairs(q_pids)
        junk = self.g_cam[cols] == q_cam[rows]
        first, ap, inp = _chunk_rank_stats(
            dist,
            q_pids,
            q_cam,
            self.g_pids,
            self.g_cam,
            rows[~junk],
            cols[~junk],
            rows[junk],
            cols[junk],
        )
        if first.numel() == 0:
            return
        self.num_valid += int(first.numel())
        self.ap_sum += float(ap.sum())
        self.inp_sum += float(inp.sum())
        first = first[first <= self.max_rank].cpu()
        self.cmc_counts += np.bincount(first.numpy() - 1, minlength=self.max_rank)[: self.max_rank]

    def result(self) -> dict:
        if self.num_valid == 0:
            raise ValueError(
                "no query has a true match in the gallery (after the same-camera "
                "same-identity removal)"
            )
        n = self.num_valid
        return {
            "cmc": np.cumsum(self.cmc_counts) / n,
            "mAP": self.ap_sum / n,
            "mINP": self.inp_sum / n,
            "num_valid_queries": n,
        }


def _chunk_rank_stats(
    dist: Tensor,
    q_pids: Tensor,
    q_cam: Tensor,
    g_pids: Tensor,
    g_cam: Tensor,
    good_r: Tensor,
    good_c: Tensor,
    junk_r: Tensor,
    junk_c: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per valid query of a chunk: rank of the first true match, AP and INP.

    With ``r_1 < ... < r_m`` the (1-based) ranks of the ``m`` true matches in the filtered
    ranking: ``AP = 1/m sum_k k / r_k``, ``INP = m / r_m`` and the first-match rank is ``r_1``.
    ``good_*`` / ``junk_*`` are the (row, column) positions of the true matches and of the
    removed same-pid same-camera items.
    """
    c, g = dist.shape
    dev = dist.device
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    n_good = torch.bincount(good_r, minlength=c)

    # Only items not farther than the last true match influence the ranks of the true matches.
    t_max = torch.full((c,), -torch.inf, dtype=dist.dtype, device=dev)
    t_max.scatter_reduce_(0, good_r, dist[good_r, good_c], reduce="amax")
    relevant = dist <= t_max[:, None]
    relevant[junk_r, junk_c] = False
    total = int(torch.count_nonzero(relevant))
    if total <= (c * g) // 4:
        # Sort only the relevant items: by distance (stable, so ties keep gallery order), then
        # stable by row, giving each row's items in ranking order.
        rows, cols = relevant.nonzero(as_tuple=True)
        del relevant
        perm = torch.sort(dist[rows, cols], stable=True).indices
        perm = perm[torch.sort(rows[perm], stable=True).indices]
        rows_s, cols_s = rows[perm], cols[perm]
        is_match = g_pids[cols_s] == q_pids[rows_s]  # junk is already excluded
        n_rel = torch.bincount(rows, minlength=c)
        pos = torch.arange(total, device=dev) - (torch.cumsum(n_rel, 0) - n_rel)[rows_s]
        m_rank = (pos[is_match] + 1).to(torch.float64)
    else:
        del relevant
        order = torch.sort(dist, dim=1, stable=True).indices
        same = g_pids[order] == q_pids[:, None]
        keep = ~(same & (g_cam[order] == q_cam[:, None]))
        m_rank = keep.cumsum(1)[same & keep].to(torch.float64)
    # m_rank lists the ranks of the true matches, row by row, increasing within a row.
    valid = n_good > 0
    m_start = torch.cumsum(n_good, 0) - n_good
    m_row = torch.repeat_interleave(torch.arange(c, device=dev), n_good)
    k = (torch.arange(m_rank.numel(), device=dev) - m_start[m_row] + 1).to(torch.float64)
    ap = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, m_row, k / m_rank)
    ap = ap[valid] / n_good[valid]
    first = m_rank[m_start[valid]].to(torch.int64)
    inp = n_good[valid].to(torch.float64) / m_rank[(m_start + n_good - 1)[valid]]
    return first, ap, inp


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> dict:
    """CMC, mAP and mINP of a query x gallery distance matrix (Market-1501 protocol).

    For each query, gallery items with the same pid and camera are removed, and with
    ``r_1 < ... < r_m`` the ranks of its ``m`` true matches in the remaining ranking:
    ``AP = (1/m) sum_k k / r_k`` (precision at each true match, averaged over the matches),
    ``INP = m / r_m`` (Ye et al., TPAMI 2021), and ``CMC(k) = 1[r_1 <= k]``; all are averaged
    over the queries with at least one true match.

    Args:
        distmat: Distances, shape (q, g), numpy array or tensor (any device).
        q_pids: Query identities, shape (q,).
        g_pids: Gallery identities, shape (g,).
        q_camids: Query camera ids, shape (q,).
        g_camids: Gallery camera ids, shape (g,).
        max_rank: Length of the returned CMC curve.
        chunk_size: Queries per chunk (``None``: about 16M matrix elements per chunk).

    Returns:
        ``{"cmc": np.ndarray (max_rank,), "mAP": float, "mINP": float,
        "num_valid_queries": int}``, fractions in [0, 1].
    """
    dist = _as_tensor(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D, got shape {tuple(dist.shape)}")
    dev = dist.device
    qp, gp = _as_ids(q_pids, dev), _as_ids(g_pids, dev)
    qc, gc = _as_ids(q_camids, dev), _as_ids(g_camids, dev)
    if (
        (qp.numel(), gp.numel()) != tuple(dist.shape)
        or qc.numel() != qp.numel()
        or gc.numel() != gp.numel()
    ):
        raise ValueError("distmat shape does not match the pid/camid vectors")
    acc = _RankAccumulator(max_rank, gp, gc)
    step = _rows_per_chunk(dist.shape[1], chunk_size)
    for s in range(0, dist.shape[0], step):
        e = s + step
        acc.add(dist[s:e], qp[s:e], qc[s:e])
    return acc.result()


def evaluate_from_features(
    q_feats: ArrayLike,
    g_feats: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    metric: Metric = "euclidean",
    normalize: bool = False,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int | None = None,
) -> dict:
    """:func:`evaluate_rank` from features, never holding the q x g distance matrix.

    Distances (see :func:`pairwise_distance`) are computed for a chunk of queries at a time and
    evaluated at once. With ``rerank=True`` the chunks come from :func:`iter_re_ranked_features`
    (k-reciprocal re-ranking of the query + gallery distances under ``metric``).

    Args:
        q_feats: Query features, shape (q, d).
        g_feats: Gallery features, shape (g, d).
        q_pids: Query identities.
        g_pids: Gallery identities.
        q_camids: Query camera ids.
        g_camids: Gallery camera ids.
        max_rank: Length of the returned CMC curve.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        normalize: L2-normalise the features first.
        rerank: Apply k-reciprocal re-ranking.
        k1: Re-ranking neighbourhood size.
        k2: Re-ranking query-expansion size.
        lambda_value: Weight of the original distance in the re-ranked distance.
        chunk_size: Queries per chunk (``None``: automatic).

    Returns:
        Same dict as :func:`evaluate_rank`.
    """
    qf = _prepare_features(q_feats, metric)
    gf = _prepare_features(g_feats, metric).to(device=qf.device, dtype=qf.dtype)
    if normalize:
        qf = torch.nn.functional.normalize(qf, dim=1)
        gf = torch.nn.functional.normalize(gf, dim=1)
    dev = qf.device
    qp, gp = _as_ids(q_pids, dev), _as_ids(g_pids, dev)
    qc, gc = _as_ids(q_camids, dev), _as_ids(g_camids, dev)
    if qp.numel() != qf.shape[0] or gp.numel() != gf.shape[0]:
        raise ValueError("feature counts do not match the pid vectors")
    acc = _RankAccumulator(max_rank, gp, gc)
    if rerank:
        chunks = iter_re_ranked_features(
            qf, gf, metric=metric, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=chunk_size
        )
        for s, e, d in chunks:
            acc.add(d.to(dev), qp[s:e], qc[s:e])
    else:
        g_sq = None if metric == "cosine" else gf.pow(2).sum(1)
        step = _rows_per_chunk(gf.shape[0], chunk_size)
        for s in range(0, qf.shape[0], step):
            e = s + step
            acc.add(_dist_block(qf[s:e], gf, g_sq, metric), qp[s:e], qc[s:e])
    return acc.result()


# --------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# --------------------------------------------------------------------------------------------
#
# Notation: the N = q + g images are ordered queries first. D is the N x N original distance
# matrix [[q_q, q_g], [q_g^T, g_g]]. As in the reference implementation of Zhong et al., the
# working distance is d(i, j) = D[j, i]^2 / max_k D[k, i]^2 (squared, each column divided by
# its maximum, then transposed), so row i of d is column i of D. We fetch columns of D as rows
# ("M = D^T"), which makes the normalisation a per-row maximum.


class _MatrixSource:
    """Rows / entries of ``M = D^T`` from the three dense distance blocks."""

    def __init__(self, q_g: Tensor, q_q: Tensor, g_g: Tensor) -> None:
        self.qg, self.qq, self.gg = q_g, q_q, g_g
        self.nq, self.ng = q_g.shape
        self.n = self.nq + self.ng

    def rows(self, s: int, e: int) -> Tensor:
        nq = self.nq
        parts = []
        if s < nq:  # M[i, :] = (q_q[:, i], q_g[i, :]) for a query i
            a, b = s, min(e, nq)
            parts.append(torch.cat([self.qq[:, a:b].T, self.qg[a:b]], 1))
        if e > nq:  # M[i, :] = (q_g[:, i - nq], g_g[:, i - nq]) for a gallery i
            a, b = max(s, nq) - nq, e - nq
            parts.append(torch.cat([self.qg[:, a:b].T, self.gg[:, a:b].T], 1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def entries(self, i: Tensor, j: Tensor) -> Tensor:
        nq = self.nq
        out = torch.empty(i.shape, dtype=self.qg.dtype, device=self.qg.device)
        iq, jq = i < nq, j < nq
        m = iq & jq
        out[m] = self.qq[j[m], i[m]]
        m = iq & ~jq
        out[m] = self.qg[i[m], j[m] - nq]
        m = ~iq & jq
        out[m] = self.qg[j[m], i[m] - nq]
        m = ~iq & ~jq
        out[m] = self.gg[j[m] - nq, i[m] - nq]
        return out

    def query_gallery(self, s: int, e: int) -> Tensor:
        return self.qg[s:e]


class _FeatureSource:
    """Rows / entries of the (symmetric) distance matrix computed from features."""

    _PAIR_CHUNK = 8192

    def __init__(self, q_feats: Tensor, g_feats: Tensor, metric: str) -> None:
        self.metric = metric
        self.x = torch.cat([q_feats, g_feats], 0)
        self.sq = None if metric == "cosine" else self.x.pow(2).sum(1)
        self.nq, self.ng = q_feats.shape[0], g_feats.shape[0]
        self.n = self.nq + self.ng

    def rows(self, s: int, e: int) -> Tensor:
        return _dist_block(self.x[s:e], self.x, self.sq, self.metric)

    def symmetric_rows(self, s: int, e: int) -> Tensor:
        """Rows ``s:e`` of ``x`` (see :func:`_symmetric_ranking`) over columns ``s:``,
        one matrix product: an entry and its mirror are the same number."""
        xb, xs = self.x[s:e], self.x[s:]
        if self.metric == "cosine":
            one = torch.ones((), dtype=xb.dtype, device=xb.device)
            return torch.addmm(one, xb, xs.T, alpha=-1.0)
        return torch.addmm(self.sq[s:].unsqueeze(0), xb, xs.T, alpha=-2.0).add_(
            self.sq[s:e, None])

    def m2_of(self, x: Tensor) -> Tensor:
        """``M^2`` in float32 of values of ``x``, through the operations of :meth:`rows`."""
        m = x.clamp_min(0.0)
        if self.metric == "euclidean":
            m = m.sqrt()
        return m.pow(2).to(torch.float32)

    def entries(self, i: Tensor, j: Tensor) -> Tensor:
        out = torch.empty(i.shape, dtype=self.x.dtype, device=self.x.device)
        for s in range(0, i.numel(), self._PAIR_CHUNK):
            ii, jj = i[s : s + self._PAIR_CHUNK], j[s : s + self._PAIR_CHUNK]
            dot = torch.bmm(self.x[ii].unsqueeze(1), self.x[jj].unsqueeze(2)).view(-1)
            if self.metric == "cosine":
                d = (1.0 - dot).clamp_min_(0.0)
            else:
                d = (self.sq[ii] + self.sq[jj] - 2.0 * dot).clamp_min_(0.0)
                if self.metric == "euclidean":
                    d = d.sqrt_()
            out[s : s + self._PAIR_CHUNK] = d
        return out

    def query_gallery(self, s: int, e: int) -> Tensor:
        nq = self.nq
        return _dist_block(
            self.x[s:e], self.x[nq:], None if self.sq is None else self.sq[nq:], self.metric
        )


def _working_dist(m: Tensor, row_max: Tensor) -> Tensor:
    """``d = M^2 / rowmax`` in float32, as the reference (square, cast, divide)."""
    return m.pow(2).to(torch.float32) / row_max


def _ranking(source, kmax: int, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """Row maxima of ``M^2`` and the first ``kmax`` entries of every row's ranking under ``d``."""
    if isinstance(source, _FeatureSource):
        return _symmetric_ranking(source, kmax, chunk_size)
    return _row_ranking(source, kmax, chunk_size)


def _row_ranking(source, kmax: int, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """:func:`_ranking` a block of whole rows of ``M`` at a time (any source)."""
    n = source.n
    row_max = torch.empty(n, dtype=torch.float32)
    nbr = torch.empty((n, kmax), dtype=torch.int64)
    step = _rows_per_chunk(n, chunk_size)
    for s in range(0, n, step):
        e = min(s + step, n)
        m2 = source.rows(s, e).pow(2).to(torch.float32)
        rmax = m2.amax(1)
        rmax = torch.where(rmax > 0, rmax, torch.ones_like(rmax))
        row_max[s:e] = rmax
        d = m2.div_(rmax[:, None])
        nbr[s:e] = torch.topk(d, kmax, dim=1, largest=False, sorted=True).indices
        del m2, d
    return row_max, nbr


def _symmetric_ranking(source: _FeatureSource, kmax: int,
                       chunk_size: int | None) -> tuple[Tensor, Tensor]:
    """:func:`_ranking` for features, with half the matrix products: the distance matrix is
    symmetric, so block ``s:e`` is computed against columns ``s:`` only and also serves, read
    down its columns, the rows after ``e`` (their candidates among rows ``s:e`` merged into
    running top-``kmax`` lists and row maxima). Rows are ranked by
    ``x = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (cosine: ``1 - x_i.x_j``), which orders a row as
    ``d = M^2 / rowmax`` does; the row maxima of ``M^2`` come from the largest ``x`` of a row
    through :meth:`_FeatureSource.m2_of`. Memory: ``chunk_size x N`` per block (at least
    1024 rows, so the merges stay cheap) plus the ``N x kmax`` lists."""
    n, x = source.n, source.x
    step = _rows_per_chunk(n, chunk_size)
    if chunk_size is None:
        step = max(step, min(1024, n))
    best_val = torch.full((n, kmax), float("inf"), dtype=x.dtype)
    best_idx = torch.zeros((n, kmax), dtype=torch.int64)
    top = torch.full((n,), float("-inf"), dtype=x.dtype)
    for s in range(0, n, step):
        e = min(s + step, n)
        block = source.symmetric_rows(s, e)  # (e - s, n - s): rows s:e, columns s:
        top[s:e] = torch.maximum(top[s:e], block.amax(1))
        vals, idx = torch.topk(block, min(kmax, n - s), dim=1, largest=False, sorted=False)
        vals = torch.cat([best_val[s:e], vals], 1)
        idx = torch.cat([best_idx[s:e], idx + s], 1)
        order = torch.topk(vals, kmax, dim=1, largest=False, sorted=True).indices
        best_idx[s:e] = idx.gather(1, order)
        if e < n:  # columns e: are rows e: of the symmetric matrix
            later = block[:, e - s:].T
            top[e:] = torch.maximum(top[e:], later.amax(1))
            vals, idx = torch.topk(later, min(kmax, e - s), dim=1, largest=False, sorted=False)
            vals = torch.cat([best_val[e:], vals], 1)
            idx = torch.cat([best_idx[e:], idx + s], 1)
            kept = torch.topk(vals, kmax, dim=1, largest=False, sorted=False)
            best_val[e:], best_idx[e:] = kept.values, idx.gather(1, kept.indices)
        del block
    m2 = source.m2_of(top)
    return torch.where(m2 > 0, m2, torch.ones_like(m2)), best_idx


def _jaccard_chunks(
    v: sp.csr_matrix, nq: int, chunk_size: int | None
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``sum_l min(V[i, l], V[j, l])`` for query rows i, gallery rows j."""
    n = v.shape[0]
    ng = n - nq
    vg = v[nq:].tocsc()
    vg.sort_indices()
    colptr = torch.from_numpy(vg.indptr.astype(np.int64))
    g_rows = torch.from_numpy(vg.indices.astype(np.int64))
    g_vals = torch.from_numpy(vg.data)
    colcount = colptr[1:] - colptr[:-1]
    vq = v[:nq]
    q_ptr = torch.from_numpy(vq.indptr.astype(np.int64))
    q_cols = torch.from_numpy(vq.indices.astype(np.int64))
    q_vals = torch.from_numpy(vq.data)
    # Work per query: number of (query entry, gallery entry) pairs sharing a column.
    per_entry = colcount[q_cols]
    csum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(per_entry, 0)])
    per_query = csum[q_ptr[1:]] - csum[q_ptr[:-1]]
    max_rows = _rows_per_chunk(ng, chunk_size)
    max_pairs = 1 << 23
    s = 0
    while s < nq:
        e, pairs = s, 0
        while e < nq and e - s < max_rows and (e == s or pairs + int(per_query[e]) <= max_pairs):
            pairs += int(per_query[e])
            e += 1
        a, b = int(q_ptr[s]), int(q_ptr[e])
        cnt = per_entry[a:b]
        row = torch.repeat_interleave(
            torch.repeat_interleave(torch.arange(e - s), q_ptr[s + 1 : e + 1] - q_ptr[s:e]), cnt
        )
        qv = torch.repeat_interleave(q_vals[a:b], cnt)
        start = torch.repeat_interleave(colptr[q_cols[a:b]] - (torch.cumsum(cnt, 0) - cnt), cnt)
        pos = start + torch.arange(int(cnt.sum()))
        out = torch.zeros((e - s) * ng, dtype=torch.float32)
        out.index_add_(0, row * ng + g_rows[pos], torch.minimum(qv, g_vals[pos]))
        yield s, e, out.view(e - s, ng)
        s = e


def _re_ranked_chunks(
    source, k1: int, k2: int, lambda_value: float, chunk_size: int | None
) -> Iterator[tuple[int, int, Tensor]]:
    n = source.n
    row_max, nbr = _ranking(source, max(min(k1 + 1, n), min(k2, n)), chunk_size)
    v = k_reciprocal_vectors(
        nbr, k1, k2, lambda i, j: _working_dist(source.entries(i, j), row_max[i])
    )
    for s, e, tmin in _jaccard_chunks(v, source.nq, chunk_size):
        # Jaccard distance d_J = 1 - s / (2 - s), final (1 - lambda) d_J + lambda d.
        jac = 1.0 - tmin / (2.0 - tmin)
        tmin = None
        d = _working_dist(source.query_gallery(s, e), row_max[s:e, None].to(jac.device))
        yield s, e, jac.mul_(1.0 - lambda_value).add_(d.to(jac.device), alpha=lambda_value)


def _check_rerank_args(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def iter_re_ranked(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """Stream the re-ranked distances of :func:`re_ranking`, a chunk of queries at a time.

    Yields:
        ``(start, end, dist)`` with ``dist`` the float32 re-ranked distances of queries
        ``start:end`` to the whole gallery, a CPU tensor of shape (end - start, g).
    """
    _check_rerank_args(k1, k2, lambda_value)
    qg, qq, gg = (_as_tensor(x).cpu() for x in (q_g_dist, q_q_dist, g_g_dist))
    if qq.shape != (qg.shape[0],) * 2 or gg.shape != (qg.shape[1],) * 2:
        raise ValueError("q_q_dist must be q x q and g_g_dist g x g for q_g_dist of shape q x g")
    yield from _re_ranked_chunks(_MatrixSource(qg, qq, gg), k1, k2, lambda_value, chunk_size)


def iter_re_ranked_features(
    q_feats: ArrayLike,
    g_feats: ArrayLike,
    metric: Metric = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """Re-ranked distances from features, streamed over query chunks.

    Equals ``iter_re_ranked(D(q, g), D(q, q), D(g, g))`` with ``D`` = :func:`pairwise_distance`
    under ``metric`` (up to float rounding), but never forms an N x N or q x g matrix: the
    neighbour lists come from a chunked pass over the rows of ``D`` (top-k per chunk).

    Yields:
        ``(start, end, dist)`` as :func:`iter_re_ranked`.
    """
    _check_rerank_args(k1, k2, lambda_value)
    qf = _prepare_features(q_feats, metric).cpu()
    gf = _prepare_features(g_feats, metric).cpu().to(qf.dtype)
    yield from _re_ranked_chunks(_FeatureSource(qf, gf, metric), k1, k2, lambda_value, chunk_size)


def _collect(chunks: Iterator[tuple[int, int, Tensor]], nq: int, ng: int) -> Tensor:
    out = torch.empty((nq, ng), dtype=torch.float32)
    for s, e, d in chunks:
        out[s:e] = d
    return out


def re_ranking(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray | Tensor:
    """k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
    k-reciprocal Encoding", CVPR 2017), numerically as their reference implementation.

    With ``d(i, j) = D[i, j]^2 / max_k D[k, i]^2`` on the N = q + g images (queries first):
    ``R(i, k) = {j in N(i, k + 1) : i in N(j, k + 1)}`` (k-reciprocal neighbours, ``N(i, k)``
    the k nearest including ``i``); the set is expanded by ``R(c, round(k1/2))`` of every
    ``c`` in ``R(i, k1)`` sharing more than 2/3 of its members; ``V[i, j] = exp(-d(i, j))``
    on the expanded set, normalised to sum 1; ``V_i`` is replaced by the mean of ``V`` over the
    ``k2`` nearest rows (local query expansion); the Jaccard distance
    ``d_J(i, j) = 1 - s / (2 - s)`` with ``s = sum_l min(V[i, l], V[j, l])``; and the result
    is ``(1 - lambda) d_J + lambda d``. V is sparse (CSR): memory grows with
    ``N * k1`` besides the inputs and the q x g output.

    Args:
        q_g_dist: Query-gallery distances (q, g).
        q_q_dist: Query-query distances (q, q).
        g_g_dist: Gallery-gallery distances (g, g).
        k1: Size of the k-reciprocal neighbourhood.
        k2: Size of the local query expansion (1 disables it).
        lambda_value: Weight of the original distance.

    Returns:
        Re-ranked float32 q x g distances; a numpy array unless ``q_g_dist`` is a tensor.
    """
    qg = _as_tensor(q_g_dist)
    out = _collect(iter_re_ranked(qg, q_q_dist, g_g_dist, k1, k2, lambda_value), *qg.shape)
    return out if isinstance(q_g_dist, Tensor) else out.numpy()


def re_ranking_features(
    q_feats: ArrayLike,
    g_feats: ArrayLike,
    metric: Metric = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> Tensor:
    """Re-ranked q x g distances from features (see :func:`iter_re_ranked_features`)."""
    chunks = iter_re_ranked_features(q_feats, g_feats, metric, k1, k2, lambda_value)
    return _collect(chunks, len(q_feats), len(g_feats))
