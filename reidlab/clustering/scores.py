"""Similarity of classification-score vectors (IICS inter-camera similarity, eq. 9)."""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

_ROWS = 4  # rows of A per kernel task (register blocking: each B value is loaded once for 4)
_TILE = 32  # rows of B per kernel task (a 32 x D tile of B stays in the core's cache)


@njit(parallel=True, fastmath=True, cache=True)
def _l1_distances(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[i, j] = sum_k |a[i, k] - b[j, k]|`` on the CPU cores: tasks of 4 rows of ``a``
    against 32 rows of ``b``, the inner loop over ``k`` vectorized (fastmath lets the compiler
    keep several partial sums per accumulator)."""
    n_a, dim = a.shape
    n_b = b.shape[0]
    row_blocks = (n_a + _ROWS - 1) // _ROWS
    tiles = (n_b + _TILE - 1) // _TILE
    for task in prange(row_blocks * tiles):
        i0 = (task % row_blocks) * _ROWS
        j0 = (task // row_blocks) * _TILE
        j1 = min(j0 + _TILE, n_b)
        if i0 + _ROWS <= n_a:
            for j in range(j0, j1):
                s0 = s1 = s2 = s3 = out.dtype.type(0)
                for k in range(dim):
                    bk = b[j, k]
                    s0 += abs(a[i0, k] - bk)
                    s1 += abs(a[i0 + 1, k] - bk)
                    s2 += abs(a[i0 + 2, k] - bk)
                    s3 += abs(a[i0 + 3, k] - bk)
                out[i0, j] = s0
                out[i0 + 1, j] = s1
                out[i0 + 2, j] = s2
                out[i0 + 3, j] = s3
        else:
            for i in range(i0, n_a):
                for j in range(j0, j1):
                    s = out.dtype.type(0)
                    for k in range(dim):
                        s += abs(a[i, k] - b[j, k])
                    out[i, j] = s


def l1_distances(a: Tensor, b: Tensor) -> Tensor:
    """``||a_i - b_j||_1`` for every pair: ``torch.cdist(p=1)`` on an accelerator; on the
    CPU a compiled blocked kernel (:func:`_l1_distances`, about 10x faster than
    ``torch.cdist``; ``benchmarks/iics_clustering.py``) on as many cores as torch uses."""
    if a.device.type != "cpu":
        return torch.cdist(a[None], b[None], p=1)[0]
    a_np = np.ascontiguousarray(a.detach().numpy())
    b_np = np.ascontiguousarray(b.detach().numpy())
    out = np.empty((len(a_np), len(b_np)), dtype=a_np.dtype)
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        _l1_distances(a_np, b_np, out)
    finally:
        numba.set_num_threads(numba_threads)
        # numba's OpenMP threading layer shares torch's libgomp and can leave torch's
        # intra-op count at numba's: put torch's back (else a `--threads 1` IICS run went
        # on with 2 threads after its first inter-camera clustering)
        torch.set_num_threads(torch_threads)
    return torch.from_numpy(out)


def score_jaccard(scores_a: Tensor, scores_b: Tensor) -> Tensor:
    """Jaccard similarity of non-negative score vectors for every pair (IICS eq. 9):

        Delta(s_m, s_n) = sum_k min(s_m,k, s_n,k) / sum_k max(s_m,k, s_n,k)

    Computed without the (A, B, D) tensor of element-wise minima: since ``min + max = a + b``
    and ``max - min = |a - b|``, ``Delta = (S_m + S_n - L1) / (S_m + S_n + L1)`` with
    ``S = sum_k s_k`` and ``L1 = ||s_m - s_n||_1`` (:func:`l1_distances`), so a block
    needs O(A * B) memory. Two all-zero vectors get 0.

    Args:
        scores_a: (A, D) non-negative scores, e.g. concatenated per-camera softmax (eq. 10).
        scores_b: (B, D) on the same device.

    Returns:
        (A, B) similarities in [0, 1], in the scores' floating dtype (integers, and half
        precision on the CPU: float32).
    """
    if scores_a.dim() != 2 or scores_b.dim() != 2 or scores_a.shape[1] != scores_b.shape[1]:
        raise ValueError(f"score_jaccard needs (A, D) and (B, D) scores, got "
                         f"{tuple(scores_a.shape)} and {tuple(scores_b.shape)}")
    half = scores_a.dtype in (torch.float16, torch.bfloat16)
    if not scores_a.is_floating_point() or (half and scores_a.device.type == "cpu"):
        scores_a = scores_a.float()
    scores_b = scores_b.to(scores_a)
    l1 = l1_distances(scores_a, scores_b)
    total = scores_a.sum(1)[:, None] + scores_b.sum(1)[None, :]
    union = total + l1
    sim = (total - l1) / union.clamp_min(torch.finfo(union.dtype).tiny)
    return sim.clamp_(0, 1)
