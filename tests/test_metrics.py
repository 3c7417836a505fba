"""Tests of reidlab.metrics: evaluation protocol, distances, re-ranking, Metric (incl. DDP)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reidlab.metrics import (
    ReIDRetrievalMetric,
    evaluate_from_features,
    evaluate_rank,
    iter_re_ranked,
    iter_re_ranked_features,
    pairwise_distance,
    re_ranking,
    re_ranking_features,
)

# --------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------


def _reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Market-1501 protocol, one query at a time (ties broken by gallery index)."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        removed = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        hits = (g_pids[order] == q_pids[i])[~removed]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the true matches
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
        cmcs.append((np.arange(1, max_rank + 1) >= ranks[0]).astype(np.float64))
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def _dense_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """k-reciprocal re-ranking written densely from the paper's definitions (slow, small N)."""
    nq = q_g.shape[0]
    big = np.block([[q_q, q_g], [q_g.T, g_g]])
    big = np.square(big).astype(np.float32)
    d = (big / big.max(axis=0)).T  # row i: column i of the squared matrix over its maximum
    n = d.shape[0]
    ranking = np.argsort(d, axis=1)

    def reciprocal(i, k):
        return [j for j in ranking[i, : k + 1] if i in ranking[j, : k + 1]]

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for c in r_i:
            r_c = reciprocal(c, half)
            if len(set(r_c) & set(r_i)) > 2.0 / 3.0 * len(r_c):
                expanded.update(r_c)
        cols = np.array(sorted(expanded))
        w = np.exp(-d[i, cols])
        v[i, cols] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[ranking[i, :k2]].mean(axis=0) for i in range(n)])
    out = np.empty((nq, n), dtype=np.float32)
    for i in range(nq):
        s = np.minimum(v[i][None, :], v).sum(axis=1)
        out[i] = (1.0 - s / (2.0 - s)) * (1.0 - lambda_value) + d[i] * lambda_value
    return out[:, nq:]


def _ids(rng, nq, ng, n_ids=12, n_cams=4):
    q_pids = rng.integers(0, n_ids + 3, nq)  # some query ids never appear in the gallery
    g_pids = rng.integers(0, n_ids, ng)
    g_pids[rng.random(ng) < 0.15] = -1  # distractors / junk id
    q_camids = rng.integers(0, n_cams, nq)
    g_camids = rng.integers(0, n_cams, ng)
    # A query whose only gallery matches share its camera must be skipped.
    g_pids[g_pids == 5] = 6
    g_pids[:2] = 5
    g_camids[:2] = 1
    q_pids[:2] = 5
    q_camids[:2] = 1
    return q_pids, g_pids, q_camids, g_camids


def _check_eval(res, ref, tol=1e-6):
    cmc, m_ap, m_inp, n_valid = ref
    assert res["num_valid_queries"] == n_valid
    np.testing.assert_allclose(res["cmc"], cmc, atol=tol, rtol=0)
    assert abs(res["mAP"] - m_ap) < tol
    assert abs(res["mINP"] - m_inp) < tol


def _structured_features(rng, pids, camids, dim=16, noise=0.8):
    """Identity centre + camera shift + noise (pid -1 gets a centre of its own)."""
    centres = np.random.default_rng(123).normal(size=(64, dim))
    cam_shift = 0.3 * np.random.default_rng(321).normal(size=(16, dim))
    return (centres[pids] + cam_shift[camids] + noise * rng.normal(size=(len(pids), dim))).astype(
        np.float32
    )


# --------------------------------------------------------------------------------------------
# evaluate_rank
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_evaluate_rank_matches_reference(structured, chunk_size):
    rng = np.random.default_rng(0)
    nq, ng = 40, 300
    q_pids, g_pids, q_camids, g_camids = _ids(rng, nq, ng)
    if structured:  # true matches near the top: exercises the partial-sort path
        qf = _structured_features(rng, q_pids, q_camids, noise=0.1)
        gf = _structured_features(rng, g_pids, g_camids, noise=0.1)
        distmat = pairwise_distance(qf, gf).double().numpy()
    else:  # uniform random ranking: exercises the full-sort path
        distmat = rng.random((nq, ng))
    ref = _reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    assert ref[3] < nq  # some queries really are skipped
    res = evaluate_rank(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, chunk_size=chunk_size
    )
    assert res["cmc"].shape == (50,)
    _check_eval(res, ref)
    # torch inputs give the same numbers
    res_t = evaluate_rank(
        torch.from_numpy(distmat),
        torch.from_numpy(q_pids),
        torch.from_numpy(g_pids),
        torch.from_numpy(q_camids),
        torch.from_numpy(g_camids),
        max_rank=50,
    )
    _check_eval(res_t, ref)


@pytest.mark.parametrize("matches_first", [False, True])
@pytest.mark.parametrize("scale", [3, 40])
def test_evaluate_rank_ties_broken_by_gallery_index(scale, matches_first):
    rng = np.random.default_rng(1)
    nq, ng = 25, 120
    q_pids, g_pids, q_camids, g_camids = _ids(rng, nq, ng, n_ids=6)
    distmat = rng.integers(0, scale, (nq, ng)).astype(np.float32)  # many ties
    if matches_first:  # most non-matches pushed behind: exercises the partial-sort path
        far = (q_pids[:, None] != g_pids[None, :]) & (rng.random((nq, ng)) < 0.9)
        distmat += scale * far
    ref = _reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, 10)
    _check_eval(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10), ref)


def test_evaluate_rank_hand_example():
    # One query (pid 1, cam 0). Gallery ranked: [pid1 cam0 (junk), pid2, pid1 cam1, pid3, pid1]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    res = evaluate_rank(distmat, [1], [1, 2, 1, 3, 1], [0], [0, 0, 1, 0, 2], max_rank=4)
    # filtered ranking: pid2, pid1, pid3, pid1 -> matches at ranks 2 and 4
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1])
    assert res["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res["mINP"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        evaluate_rank(distmat, [7], [1, 2, 1, 3, 1], [0], [0, 0, 1, 0, 2])


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_evaluate_from_features_equals_distmat(metric):
    rng = np.random.default_rng(2)
    q_pids, g_pids, q_camids, g_camids = _ids(rng, 30, 200)
    qf = _structured_features(rng, q_pids, q_camids)
    gf = _structured_features(rng, g_pids, g_camids)
    distmat = pairwise_distance(qf, gf, metric=metric)
    expected = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    for cs in (None, 4):
        res = evaluate_from_features(
            qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, chunk_size=cs
        )
        _check_eval(
            res, (expected["cmc"], expected["mAP"], expected["mINP"], expected["num_valid_queries"])
        )


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_pairwise_distance_closed_forms(chunk_size):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(11, 6)), rng.normal(size=(17, 6))
    diff = x[:, None, :] - y[None, :, :]
    sq = (diff**2).sum(-1)
    cos = 1 - (x @ y.T) / np.linalg.norm(x, axis=1)[:, None] / np.linalg.norm(y, axis=1)[None]
    for metric, expected in (("sqeuclidean", sq), ("euclidean", np.sqrt(sq)), ("cosine", cos)):
        got = pairwise_distance(torch.from_numpy(x), y, metric=metric, chunk_size=chunk_size)
        assert got.shape == (11, 17)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    # clamping: a point against itself is exactly 0, never negative / NaN
    z = rng.normal(size=(5, 64)).astype(np.float32) * 100
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        d = pairwise_distance(z, z, metric=metric)
        assert torch.all(d >= 0) and not torch.isnan(d).any()
    with pytest.raises(ValueError):
        pairwise_distance(x, y, metric="manhattan")


# --------------------------------------------------------------------------------------------
# Re-ranking
# --------------------------------------------------------------------------------------------


def _dist_blocks(rng, nq, ng, dim=8, asymmetric=False):
    x = rng.normal(size=(nq + ng, dim))
    full = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    if asymmetric:  # checks the column/row convention of the normalisation
        full = full + 0.05 * rng.random(full.shape)
    return full[:nq, nq:], full[:nq, :nq], full[nq:, nq:]


@pytest.mark.parametrize(
    "k1,k2,lam,nq,ng,asym",
    [
        (20, 6, 0.3, 25, 95, False),
        (7, 3, 0.5, 20, 60, False),
        (5, 1, 0.0, 15, 50, True),
        (4, 2, 1.0, 12, 40, False),
        (9, 4, 0.2, 10, 50, True),
        (20, 6, 0.3, 4, 9, False),  # k1 + 1 > N
    ],
)
def test_re_ranking_matches_dense_reference(k1, k2, lam, nq, ng, asym):
    rng = np.random.default_rng(k1 * 100 + k2)
    q_g, q_q, g_g = _dist_blocks(rng, nq, ng, asymmetric=asym)
    expected = _dense_re_ranking(q_g, q_q, g_g, k1, k2, lam)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(got, np.ndarray) and got.shape == (nq, ng)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # streaming in small chunks gives the same matrix
    streamed = np.zeros_like(got)
    for s, e, d in iter_re_ranked(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam, chunk_size=3):
        assert e - s <= 3
        streamed[s:e] = d.numpy()
    np.testing.assert_allclose(streamed, expected, atol=1e-5, rtol=0)
    # re-ranking changes the distances (so the comparison above is not vacuous)
    if lam < 1.0:
        assert np.abs(expected - q_g).max() > 1e-2


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [7, 64, None])
def test_symmetric_ranking_equals_the_row_by_row_ranking(metric, chunk_size):
    """Features: each block of rows also ranks the later rows through its columns. The
    neighbour lists (in order) and the row maxima of M^2 equal the plain row-by-row ranking
    of the dense matrix (float64: no ties)."""
    from reidlab.metrics.functional import (
        _FeatureSource,
        _MatrixSource,
        _prepare_features,
        _ranking,
    )

    gen = torch.Generator().manual_seed(3)
    qf = _prepare_features(torch.randn(13, 9, generator=gen, dtype=torch.float64), metric)
    gf = _prepare_features(torch.randn(40, 9, generator=gen, dtype=torch.float64), metric)
    dense = _MatrixSource(pairwise_distance(qf, gf, metric), pairwise_distance(qf, qf, metric),
                          pairwise_distance(gf, gf, metric))
    want_max, want_nbr = _ranking(dense, 11, chunk_size)
    got_max, got_nbr = _ranking(_FeatureSource(qf, gf, metric), 11, chunk_size)
    torch.testing.assert_close(got_nbr, want_nbr, rtol=0, atol=0)
    torch.testing.assert_close(got_max, want_max, rtol=1e-6, atol=0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_re_ranking_features_and_streaming_evaluation(metric):
    rng = np.random.default_rng(4)
    q_pids, g_pids, q_camids, g_camids = _ids(rng, 30, 110)
    qf = torch.from_numpy(_structured_features(rng, q_pids, q_camids, noise=1.5))
    gf = torch.from_numpy(_structured_features(rng, g_pids, g_camids, noise=1.5))
    q_g = pairwise_distance(qf, gf, metric).double().numpy()
    q_q = pairwise_distance(qf, qf, metric).double().numpy()
    g_g = pairwise_distance(gf, gf, metric).double().numpy()
    expected = _dense_re_ranking(q_g, q_q, g_g, 20, 6, 0.3)
    np.testing.assert_allclose(re_ranking_features(qf, gf, metric).numpy(), expected, atol=1e-5)
    chunks = list(iter_re_ranked_features(qf, gf, metric, chunk_size=8))
    assert len(chunks) == 4
    # evaluation consuming the stream chunk by chunk == evaluation of the dense result
    ref = _reference_eval(expected, q_pids, g_pids, q_camids, g_camids, 50)
    res = evaluate_from_features(
        qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, rerank=True, chunk_size=8
    )
    _check_eval(res, ref, tol=1e-6)
    plain = evaluate_from_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric)
    assert plain["mAP"] != pytest.approx(res["mAP"], abs=1e-6)


# --------------------------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------------------------


def _metric_data(seed=5, n=90):
    rng = np.random.default_rng(seed)
    pids = rng.integers(0, 10, n)
    camids = rng.integers(0, 3, n)
    feats = torch.from_numpy(_structured_features(rng, pids, camids, noise=1.2))
    is_query = torch.from_numpy(rng.random(n) < 0.3)
    return feats, torch.from_numpy(pids), torch.from_numpy(camids), is_query


def _expected(feats, pids, camids, is_query, **kw):
    q, g = is_query, ~is_query
    return evaluate_from_features(feats[q], feats[g], pids[q], pids[g], camids[q], camids[g], **kw)


@pytest.mark.parametrize("rerank", [False, True])
def test_metric_equals_functional(rerank):
    feats, pids, camids, is_query = _metric_data()
    metric = ReIDRetrievalMetric(
        metric="cosine", normalize_features=True, rerank=rerank, k1=8, k2=3
    )
    for s in range(0, 90, 25):
        metric.update(feats[s : s + 25], pids[s : s + 25], camids[s : s + 25], is_query[s : s + 25])
    out = metric.compute()
    ref = _expected(
        feats, pids, camids, is_query, metric="cosine", normalize=True, rerank=rerank, k1=8, k2=3
    )
    assert out["mAP"].item() == pytest.approx(ref["mAP"], abs=1e-6)
    assert out["mINP"].item() == pytest.approx(ref["mINP"], abs=1e-6)
    for k in (1, 5, 10):
        assert out[f"rank{k}"].item() == pytest.approx(ref["cmc"][k - 1], abs=1e-6)
    # a scalar is_query flag per batch works too
    m2 = ReIDRetrievalMetric()
    m2.update(feats[is_query], pids[is_query], camids[is_query], True)
    m2.update(feats[~is_query], pids[~is_query], camids[~is_query], False)
    ref2 = _expected(feats, pids, camids, is_query)
    assert m2.compute()["mAP"].item() == pytest.approx(ref2["mAP"], abs=1e-6)


def _ddp_worker(rank, world_size, init_file, out_dir, splits):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        feats, pids, camids, is_query = _metric_data()
        metric = ReIDRetrievalMetric(rerank=True, k1=8, k2=3)
        lo, hi = splits[rank]
        for s in range(lo, hi, 16):  # uneven per-rank counts and batch sizes
            e = min(s + 16, hi)
            metric.update(feats[s:e], pids[s:e], camids[s:e], is_query[s:e])
        out = metric.compute()
        torch.save({k: v.clone() for k, v in out.items()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_metric_ddp_uneven_matches_single_process():
    feats, pids, camids, is_query = _metric_data()
    single = ReIDRetrievalMetric(rerank=True, k1=8, k2=3)
    single.update(feats, pids, camids, is_query)
    expected = single.compute()
    splits = [(0, 61), (61, 90)]
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_ddp_worker, args=(2, init_file, tmp, splits), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]
    # a single rank alone sees different data (so agreement below is meaningful)
    alone = ReIDRetrievalMetric(rerank=True, k1=8, k2=3)
    alone.update(feats[:61], pids[:61], camids[:61], is_query[:61])
    assert alone.compute()["mAP"].item() != pytest.approx(expected["mAP"].item(), abs=1e-4)
    for res in results:
        for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
            assert res[key].item() == pytest.approx(expected[key].item(), abs=1e-6), key


def test_retrieval_evaluation_arguments_fail_at_construction():
    from reidlab.callbacks import RetrievalEvaluation

    with pytest.raises(ValueError, match="unknown metric 'cosin'"):
        RetrievalEvaluation(metric="cosin")
    with pytest.raises(ValueError, match="lambda_value in"):
        RetrievalEvaluation(rerank=True, lambda_value=1.5)
    with pytest.raises(ValueError, match="top_k >= 1"):
        RetrievalEvaluation(top_k=0)
