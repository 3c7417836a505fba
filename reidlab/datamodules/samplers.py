"""Rank-aware batch samplers for re-ID training.

Every sampler here yields whole batches (lists of dataset indices) and is aware of
distributed training itself: all ranks build the same global list of batches from a
shared seed and the epoch number, and rank ``r`` takes batches ``r, r + W, r + 2W, ...``.
So the identity groups of one epoch are split across ranks without overlap, every rank
sees the same number of batches (no DDP hang), and ``set_epoch`` reshuffles (Lightning
calls it at every epoch through the ``sampler`` attribute). Use them with
``Trainer(use_distributed_sampler=False)``.

- :class:`PKBatchSampler`: P identities x K images (Hermans et al. 2017, batch-hard triplet).
- :class:`CameraAwarePKBatchSampler`: same, with the K-1 companions of each anchor drawn
  from other cameras where the identity has any.
- :class:`PerCameraBatchSampler`: a fixed number of images from every camera (IICS intra stage).
- :class:`RandomBatchSampler`: plain shuffled batches (unlabelled data).
- :class:`DomainPairBatchSampler`: DG-Net++'s batches, one (side a, side b) domain pair per
  step, every image with a positive of its (pseudo-)identity.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


class _RankAwareBatchSampler(Sampler[list[int]]):
    """Shared machinery: global batches from ``(seed, epoch)``, split by rank."""

    def __init__(
        self,
        num_batches: int | None,
        seed: int,
        num_replicas: int | None,
        rank: int | None,
    ) -> None:
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.seed = int(seed)
        self.epoch = 0
        self._num_batches = num_batches
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``."""
        self.epoch = int(epoch)

    def resume(self, epoch: int, batches_done: int) -> None:
        """Continue an interrupted epoch: the next pass is ``epoch``'s batches after the
        first ``batches_done`` of them (counted in cycles of ``len(self)``, as a shorter
        loader cycles in a ``max_size_cycle`` CombinedLoader); later passes are whole."""
        self.set_epoch(epoch)
        self._skip = int(batches_done) % len(self)

    @property
    def sampler(self) -> _RankAwareBatchSampler:
        """Lightning calls ``loader.batch_sampler.sampler.set_epoch(epoch)`` at the start of
        every epoch (also after a resume or a loader reload): route that call here."""
        return self

    def _default_num_batches(self) -> int:
        """Batches per epoch over all ranks when ``num_batches`` is not given."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Batches per rank and epoch."""
        if self._num_batches is not None:
            return int(self._num_batches)
        return max(1, self._default_num_batches() // self.num_replicas)

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        per_rank = len(self)
        batches = self._global_batches(rng, per_rank * self.num_replicas)
        skip, self._skip = self._skip, 0
        yield from batches[self.rank :: self.num_replicas][skip:]


class PKBatchSampler(_RankAwareBatchSampler):
    """P identities x K instances per batch.

    Each identity's images are shuffled and cut into groups of K; an identity with
    fewer than K images is topped up by sampling its images with replacement. A batch
    takes one group from each of P distinct identities that still have groups; exhausted
    identities get fresh groups when fewer than P remain, so any number of batches can
    be drawn. The default epoch is one pass over the groups: ``sum_i max(1, n_i // K) // P``
    batches over all ranks. Samples with a negative pid (outliers) are never drawn.

    Args:
        pids: identity of every dataset sample (pseudo-labels allowed; < 0 is skipped).
        num_ids: P, identities per batch.
        num_instances: K, images per identity.
        num_batches: batches per rank and epoch (default: one pass, see above).
        seed: shared by all ranks.
        num_replicas: world size (default: from torch.distributed, else 1).
        rank: this rank (default: from torch.distributed, else 0).
        camids: camera of every sample (used by the camera-aware subclass).
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_ids: int = 16,
        num_instances: int = 4,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        camids: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_batches, seed, num_replicas, rank)
        if num_ids < 1 or num_instances < 1:
            raise ValueError(f"num_ids and num_instances must be >= 1, got {num_ids}, "
                             f"{num_instances}")
        pids = np.asarray(pids, dtype=np.int64)
        self.camids = None if camids is None else np.asarray(camids, dtype=np.int64)
        valid = np.flatnonzero(pids >= 0)
        if valid.size == 0:
            raise ValueError("PKBatchSampler got no sample with a valid (non-negative) pid")
        order = valid[np.argsort(pids[valid], kind="stable")]
        uniq, starts = np.unique(pids[order], return_index=True)
        self.index_groups: list[np.ndarray] = np.split(order, starts[1:])
        self.num_instances = int(num_instances)
        if num_ids > len(uniq):
            warnings.warn(f"P={num_ids} identities per batch requested but only {len(uniq)} "
                          f"exist; batches will hold {len(uniq)} identities", stacklevel=2)
        self.num_ids = min(int(num_ids), len(uniq))

    @property
    def batch_size(self) -> int:
        return self.num_ids * self.num_instances

    def _default_num_batches(self) -> int:
        groups = sum(max(1, len(g) // self.num_instances) for g in self.index_groups)
        return groups // self.num_ids

    def _groups_of(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Cut one identity's images into groups of K."""
        k = self.num_instances
        perm = rng.permutation(indices)
        if len(perm) < k:
            perm = np.concatenate([perm, rng.choice(indices, k - len(perm), replace=True)])
        return [perm[i : i + k] for i in range(0, len(perm) - k + 1, k)]

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[list[int]]:
        queues: list[list[np.ndarray]] = [[] for _ in self.index_groups]
        remaining = np.zeros(len(self.index_groups), dtype=np.int64)

        def refill(ids: np.ndarray) -> None:
            for i in ids:
                queues[i] = self._groups_of(self.index_groups[i], rng)
                remaining[i] = len(queues[i])

        refill(np.arange(len(self.index_groups)))
        batches = []
        for _ in range(count):
            if np.count_nonzero(remaining) < self.num_ids:
                refill(np.flatnonzero(remaining == 0))
            chosen = rng.choice(np.flatnonzero(remaining), self.num_ids, replace=False)
            remaining[chosen] -= 1
            batches.append(np.concatenate([queues[i].pop() for i in chosen]).tolist())
        return batches


class CameraAwarePKBatchSampler(PKBatchSampler):
    """P x K batches whose K-1 companions of each anchor come from other cameras.

    Within an identity, each group starts from an unused anchor and takes its
    companions first from unused images of other cameras, then from unused images of
    the anchor's camera, then (small identities) with replacement, other cameras first.
    """

    def __init__(self, pids: Sequence[int], camids: Sequence[int], **kwargs) -> None:
        super().__init__(pids, camids=camids, **kwargs)

    def _groups_of(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        k = self.num_instances
        perm = rng.permutation(indices)
        cams = self.camids[perm]
        unused = np.ones(len(perm), dtype=bool)
        groups = []
        for _ in range(max(1, len(perm) // k)):
            anchor = int(np.flatnonzero(unused)[0])
            unused[anchor] = False
            other = np.flatnonzero(unused & (cams != cams[anchor]))
            same = np.flatnonzero(unused & (cams == cams[anchor]))
            members = np.concatenate([[anchor], other, same])[:k]
            if len(members) < k:  # identity smaller than K: top up, other cameras first
                pool = np.flatnonzero(cams != cams[anchor])
                pool = pool if len(pool) else np.arange(len(perm))
                members = np.concatenate([members, rng.choice(pool, k - len(members))])
            unused[members] = False
            groups.append(perm[members])
        return groups


class PerCameraBatchSampler(_RankAwareBatchSampler):
    """A fixed number of images from every camera per batch (IICS intra-camera stage).

    A batch is the concatenation, in increasing camera id, of ``num_per_camera``
    indices from each camera, so a module can forward each camera's chunk separately.
    Each camera's images are drawn from its own shuffled stream, reshuffled when used
    up (a camera with fewer images than ``num_per_camera`` repeats images). The default
    epoch draws ``len(dataset) // (num_cameras * num_per_camera)`` batches over all ranks.

    Args:
        camids: camera of every sample.
        num_per_camera: images per camera and batch.
        num_batches, seed, num_replicas, rank: as in :class:`PKBatchSampler`.
    """

    def __init__(
        self,
        camids: Sequence[int],
        num_per_camera: int = 8,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_batches, seed, num_replicas, rank)
        camids = np.asarray(camids, dtype=np.int64)
        if camids.size == 0:
            raise ValueError("PerCameraBatchSampler got an empty dataset")
        self.cameras = np.unique(camids)
        self.camera_indices = [np.flatnonzero(camids == c) for c in self.cameras]
        self.num_per_camera = int(num_per_camera)

    @property
    def batch_size(self) -> int:
        return self.num_per_camera * len(self.cameras)

    def _default_num_batches(self) -> int:
        return sum(len(i) for i in self.camera_indices) // self.batch_size

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[list[int]]:
        n = self.num_per_camera
        chunks = []
        for indices in self.camera_indices:
            stream = []
            while len(stream) < count * n:
                stream.extend(rng.permutation(indices).tolist())
            chunks.append(np.asarray(stream[: count * n]).reshape(count, n))
        return np.concatenate(chunks, axis=1).tolist()


class RandomBatchSampler(_RankAwareBatchSampler):
    """Shuffled batches of ``indices`` without identity structure (unlabelled images).

    The default epoch is one pass: ``len(indices) // batch_size`` batches over all ranks,
    the last incomplete batch dropped.
    """

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int = 64,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_batches, seed, num_replicas, rank)
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("RandomBatchSampler got no sample")
        self.batch_size = min(int(batch_size), self.indices.size)

    def _default_num_batches(self) -> int:
        return self.indices.size // self.batch_size

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[list[int]]:
        passes = -(-count * self.batch_size // self.indices.size)
        order = np.concatenate([rng.permutation(self.indices) for _ in range(passes)])
        return order[: count * self.batch_size].reshape(count, self.batch_size).tolist()


BATCH_TYPES = ("source-source", "target-target", "source-target", "target-source")


class DomainPairBatchSampler(_RankAwareBatchSampler):
    """DG-Net++'s training batches (METHODS.md): each step one batch type, drawn with
    ``type_weights`` over :data:`BATCH_TYPES` (the authors' 45 / 45 / 5 / 5; rounds >= 1
    give source-source weight 0), then ``batch_size`` random images of side a's domain and
    ``batch_size`` of side b's, each paired with a random other image of its identity (the
    image itself when it has none).

    Indices refer to the concatenation ``source + target`` (target sample ``i`` is
    ``len(source_pids) + i``). A batch is a list of ``(anchor, positive)`` index pairs,
    side a first: :class:`~reidlab.datasets.image_dataset.PositivePairDataset` reads them.
    Samples with a negative pid (clustering outliers) are never drawn; a side with no
    labelled sample makes its batch types impossible (their weight must be 0).

    The default epoch is one pass over the labelled images: ``(n_source + n_target) //
    (2 * batch_size)`` batches over all ranks.
    """

    def __init__(
        self,
        source_pids: Sequence[int],
        target_pids: Sequence[int],
        batch_size: int = 8,
        type_weights: Sequence[float] = (0.45, 0.45, 0.05, 0.05),
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_batches, seed, num_replicas, rank)
        weights = np.asarray(type_weights, dtype=np.float64)
        if weights.shape != (4,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"type_weights must be 4 non-negative weights for {BATCH_TYPES}, "
                             f"got {list(type_weights)}")
        source, target = (np.asarray(p, dtype=np.int64) for p in (source_pids, target_pids))
        self.offset, self.batch_size = len(source), int(batch_size)
        self.pools = {"source": self._pool(source, 0), "target": self._pool(target, len(source))}
        for k, name in enumerate(BATCH_TYPES):
            if weights[k] > 0 and any(not len(self.pools[d][0]) for d in name.split("-")):
                raise ValueError(f"batch type {name} has weight {weights[k]} but its "
                                 "domain has no labelled sample")
        self.type_weights = weights / weights.sum()
        self.types: list[str] = []  # the last pass's types, all ranks' batches, in order

    @staticmethod
    def _pool(pids: np.ndarray, offset: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        valid = np.flatnonzero(pids >= 0)
        groups = {int(p): valid[pids[valid] == p] + offset for p in np.unique(pids[valid])}
        return valid + offset, {int(i + offset): groups[int(pids[i])] for i in valid}

    def _default_num_batches(self) -> int:
        labelled = sum(len(pool) for pool, _ in self.pools.values())
        return max(1, labelled // (2 * self.batch_size))

    def _side(self, rng: np.random.Generator, domain: str) -> list[tuple[int, int]]:
        pool, same_id = self.pools[domain]
        anchors = rng.choice(pool, self.batch_size, replace=len(pool) < self.batch_size)
        pairs = []
        for a in anchors.tolist():
            others = same_id[a][same_id[a] != a]
            pairs.append((a, int(rng.choice(others)) if len(others) else a))
        return pairs

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[list]:
        types = rng.choice(len(BATCH_TYPES), size=count, p=self.type_weights)
        self.types = [BATCH_TYPES[t] for t in types]
        batches = []
        for t in types:
            side_a, side_b = BATCH_TYPES[t].split("-")
            batches.append(self._side(rng, side_a) + self._side(rng, side_b))
        return batches


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, ...`` of ``range(num_samples)``, in order.

    For evaluation under DDP: unlike ``DistributedSampler`` it never pads ranks with
    repeated samples, so every sample is seen exactly once over all ranks (per-rank counts
    may differ by one; state gathered with ``dist_reduce_fx="cat"`` handles that).
    """

    def __init__(self, num_samples: int, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        self.num_samples = int(num_samples)
        self.num_replicas, self.rank = _world(num_replicas, rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.num_replicas))
