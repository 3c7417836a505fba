from collections import Counter

import numpy as np
import pytest

from reidlab.datamodules.samplers import (
    CameraAwarePKBatchSampler,
    PerCameraBatchSampler,
    PKBatchSampler,
    RandomBatchSampler,
    ShardSampler,
)


def make_pids(sizes):
    """pids array where identity i has sizes[i] samples, shuffled positions."""
    pids = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(0).permutation(pids)


def test_pk_batches_are_p_ids_times_k():
    pids = make_pids([6, 9, 4, 12, 5, 8, 7, 4, 10, 3])
    sampler = PKBatchSampler(pids, num_ids=4, num_instances=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == sampler.batch_size == 12
        counts = Counter(pids[batch].tolist())
        assert len(counts) == 4 and set(counts.values()) == {3}
        # identity groups are contiguous: ids in blocks of K
        assert all(len(set(pids[batch[i:i + 3]])) == 1 for i in range(0, 12, 3))


def test_pk_default_epoch_is_one_pass_over_groups():
    sizes = [6, 9, 4, 12, 5, 8, 7, 4, 10, 3]
    sampler = PKBatchSampler(make_pids(sizes), num_ids=2, num_instances=4)
    groups = sum(max(1, n // 4) for n in sizes)
    assert len(sampler) == groups // 2
    assert len(PKBatchSampler(make_pids(sizes), num_ids=2, num_instances=4,
                              num_batches=7)) == 7


def test_pk_small_identity_topped_up_with_its_own_images():
    pids = make_pids([1, 2, 8, 8])
    sampler = PKBatchSampler(pids, num_ids=4, num_instances=4, num_batches=5, seed=3)
    for batch in sampler:
        for i in range(0, 16, 4):
            group = batch[i:i + 4]
            assert len(set(pids[group])) == 1
    singleton = int(np.flatnonzero(pids == 0)[0])
    assert all(batch.count(singleton) == 4 for batch in sampler)


def test_pk_skips_outliers():
    pids = make_pids([5, 5, 5, 5, 5])
    pids[::3] = -1
    for batch in PKBatchSampler(pids, num_ids=2, num_instances=2, num_batches=20):
        assert (pids[batch] >= 0).all()


def test_pk_warns_when_fewer_ids_than_p():
    with pytest.warns(UserWarning, match="only 2 exist"):
        sampler = PKBatchSampler(make_pids([4, 4]), num_ids=3, num_instances=2)
    assert sampler.batch_size == 4


def test_pk_ranks_partition_the_global_batches():
    pids = make_pids([4] * 16)  # 16 groups of K=4: no refill within one pass
    ranks = [PKBatchSampler(pids, num_ids=4, num_instances=4, seed=5, num_replicas=2, rank=r)
             for r in range(2)]
    single = PKBatchSampler(pids, num_ids=4, num_instances=4, seed=5, num_replicas=1, rank=0,
                            num_batches=4)
    for epoch in range(2):
        for s in (*ranks, single):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == 2
        glob = list(single)
        assert per_rank[0] == glob[0::2] and per_rank[1] == glob[1::2]
        seen = [set(np.concatenate(b).tolist()) for b in per_rank]
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == set(range(len(pids)))


def test_pk_set_epoch_reshuffles_deterministically():
    pids = make_pids([8] * 12)
    a = PKBatchSampler(pids, num_ids=4, num_instances=4, seed=0)
    b = PKBatchSampler(pids, num_ids=4, num_instances=4, seed=0)
    first = list(a)
    assert first == list(b) == list(a)
    a.set_epoch(1)
    assert list(a) != first
    c = PKBatchSampler(pids, num_ids=4, num_instances=4, seed=1)
    assert list(c) != first


def test_camera_aware_companions_from_other_cameras():
    # identity 0: 4 images in cam 0, 4 in cam 1; identity 1: all in cam 2 (no choice).
    pids = np.array([0] * 8 + [1] * 4)
    camids = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    sampler = CameraAwarePKBatchSampler(pids, camids, num_ids=2, num_instances=2,
                                        num_batches=30, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for i in range(0, len(batch), 2):
                group = batch[i:i + 2]
                if pids[group[0]] == 0:
                    assert camids[group[0]] != camids[group[1]]
                else:
                    assert len(set(group)) == 2  # unused images before repeats


def test_per_camera_batches():
    camids = np.array([2] * 10 + [0] * 3 + [5] * 20)
    sampler = PerCameraBatchSampler(camids, num_per_camera=4, seed=0)
    assert len(sampler) == len(camids) // 12
    for batch in sampler:
        assert camids[batch].tolist() == [0] * 4 + [2] * 4 + [5] * 4
    # a camera's stream covers all its images before repeating one
    big = PerCameraBatchSampler(camids, num_per_camera=4, num_batches=5)
    cam5 = np.concatenate([b[8:] for b in big])
    assert len(set(cam5.tolist())) == 20


def test_per_camera_ranks_disjoint():
    camids = np.repeat(np.arange(3), 16)
    ranks = [PerCameraBatchSampler(camids, num_per_camera=4, seed=2, num_replicas=2, rank=r)
             for r in range(2)]
    seen = [set(np.concatenate(list(s)).tolist()) for s in ranks]
    assert len(ranks[0]) == 2 and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(48))


def test_random_batches_one_pass_and_ranks():
    indices = np.arange(100, 150)
    ranks = [RandomBatchSampler(indices, batch_size=10, seed=0, num_replicas=2, rank=r)
             for r in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 2
    flat = np.concatenate(batches[0] + batches[1])
    assert len(set(flat.tolist())) == 40 and set(flat.tolist()) <= set(indices.tolist())


def test_invalid_rank():
    with pytest.raises(ValueError, match="rank 2"):
        RandomBatchSampler(np.arange(4), 2, num_replicas=2, rank=2)


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(11, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 3]
    assert sorted(sum(shards, [])) == list(range(11))


def test_domain_pair_batches_follow_the_type_mix_with_same_id_positives():
    from reidlab.datamodules import DomainPairBatchSampler
    from reidlab.datamodules.samplers import BATCH_TYPES

    source = np.repeat(np.arange(6), 3)  # 18 source images, 6 ids
    target = np.array([0, 0, 1, 1, 1, -1, 2, 2, -1, 3])  # 10 target images, 2 outliers
    offset = len(source)
    sampler = DomainPairBatchSampler(source, target, batch_size=4, num_batches=4000, seed=1)
    batches = list(sampler)
    assert len(batches) == 4000 and all(len(b) == 8 for b in batches)
    counts = {t: sampler.types.count(t) / len(batches) for t in BATCH_TYPES}
    for name, share in zip(BATCH_TYPES, (0.45, 0.45, 0.05, 0.05), strict=True):
        assert abs(counts[name] - share) < 0.025, (name, counts)
    labels = np.concatenate([source, target])
    for batch, kind in zip(batches[:500], sampler.types, strict=False):
        side_a, side_b = kind.split("-")
        for k, (anchor, positive) in enumerate(batch):
            domain = side_a if k < 4 else side_b
            assert (anchor >= offset) == (domain == "target")
            assert labels[anchor] >= 0 and labels[positive] == labels[anchor]
            assert (positive >= offset) == (anchor >= offset)
            alone = (labels[offset:] == labels[anchor]).sum() == 1 and anchor >= offset
            assert (positive == anchor) == alone  # itself only for target id 3's one image
    # rounds >= 1: no source-source batch; a domain without labels cannot be drawn
    no_ss = DomainPairBatchSampler(source, target, 4, (0, 0.45, 0.05, 0.05), num_batches=200)
    list(no_ss)
    assert "source-source" not in no_ss.types
    with pytest.raises(ValueError, match="no labelled sample"):
        DomainPairBatchSampler(source, np.full(10, -1), 4, (0.5, 0.5, 0, 0))
    # ranks split the global batches, and resume skips the trained ones
    ranks = [DomainPairBatchSampler(source, target, 4, num_batches=6, seed=2, num_replicas=2,
                                    rank=r) for r in (0, 1)]
    alone = DomainPairBatchSampler(source, target, 4, num_batches=12, seed=2)
    merged = [b for pair in zip(*map(list, ranks), strict=True) for b in pair]
    assert merged == list(alone)
    ranks[0].resume(0, 2)
    assert list(ranks[0]) == list(DomainPairBatchSampler(
        source, target, 4, num_batches=6, seed=2, num_replicas=2, rank=0))[2:]


def test_positive_pair_dataset_reads_anchor_and_positive_across_domains(tmp_path):
    from PIL import Image

    from reidlab.datasets import Record
    from reidlab.datasets.image_dataset import PositivePairDataset, ReIDImageDataset

    def records(domain, n):
        out = []
        for i in range(n):
            path = tmp_path / f"{domain}{i}.png"
            Image.new("RGB", (4, 8), (10 * i, 0, 0)).save(path)
            out.append(Record(str(path), i // 2, i % 2))
        return out

    def to_value(img):
        return np.asarray(img)[0, 0, 0]

    parts = [ReIDImageDataset(records("s", 4), to_value),
             ReIDImageDataset(records("t", 3), to_value, pids=[5, 5, -1])]
    pairs = PositivePairDataset(parts)
    assert len(pairs) == 7
    assert pairs[(1, 0)] == (10, 0, 1, 1, 0, 0)
    image, pid, camid, index, domain, positive = pairs[(5, 4)]
    assert (image, pid, camid, index, domain, positive) == (10, 5, 1, 5, 1, 0)
    with pytest.raises(IndexError):
        pairs[(7, 0)]
