"""A torch Dataset over :class:`Record` lists: loads images and returns training tuples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from reidlab.datasets.base import Record


def read_image(path: str) -> Image.Image:
    """Open an image as RGB, fully decoded.

    Raises:
        OSError: naming the file when it is missing, truncated or not an image; a broken
            file never becomes a silent blank image.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def _image_problem(path: str) -> str | None:
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated files fail here
        return None
    except Exception as err:  # noqa: BLE001 - any failure makes the file unusable
        return f"{type(err).__name__}: {err}"


def find_bad_images(paths: Sequence[str], desc: str = "checking images",
                    progress: bool = True, workers: int = 8) -> list[tuple[str, str]]:
    """Decode every image once (threads; PIL releases the GIL) and return ``(path,
    problem)`` for each file that is missing, empty, truncated or not an image."""
    with ThreadPoolExecutor(workers) as pool:
        problems = list(tqdm(pool.map(_image_problem, paths), total=len(paths), desc=desc,
                             disable=not progress, leave=False))
    return [(p, why) for p, why in zip(paths, problems, strict=True) if why is not None]


class ReIDImageDataset(Dataset):
    """Images of ``records``; item ``i`` is ``(image, pid, camid, i)``.

    The dataset index ``i`` travels with every sample so that features gathered
    across ranks (and padded by distributed samplers) can be put back in order.

    Args:
        records: the samples.
        transform: applied to the PIL image (e.g. from
            :func:`reidlab.datamodules.transforms.build_transforms`).
        pids: optional per-record ids overriding ``record.pid`` (pseudo-labels).
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable[[Image.Image], Any] | None = None,
        pids: Sequence[int] | None = None,
    ) -> None:
        if pids is not None and len(pids) != len(records):
            raise ValueError(f"got {len(pids)} pids for {len(records)} records")
        self.records = list(records)
        self.transform = transform
        self.pids = None if pids is None else [int(p) for p in pids]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        record = self.records[index]
        img = read_image(record.path)
        if self.transform is not None:
            img = self.transform(img)
        pid = record.pid if self.pids is None else self.pids[index]
        return img, pid, record.camid, index


class PositivePairDataset(Dataset):
    """Anchor / positive pairs over several datasets' records concatenated (DG-Net++: source
    then target): item ``(i, j)`` is ``(image_i, pid_i, camid_i, i, domain_i, image_j)``,
    ``domain_i`` the index of the dataset sample ``i`` comes from (0 source, 1 target).
    Indices come from :class:`~reidlab.datamodules.DomainPairBatchSampler`.

    Args:
        parts: one :class:`ReIDImageDataset` per domain, in index order.
    """

    def __init__(self, parts: Sequence[ReIDImageDataset]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        domain = int(np.searchsorted(self.starts, index, side="right")) - 1
        if not 0 <= domain < len(self.parts):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return domain, index - int(self.starts[domain])

    def __getitem__(self, pair: tuple[int, int]) -> tuple[Any, int, int, int, int, Any]:
        anchor, positive = pair
        domain, local = self._locate(anchor)
        image, pid, camid, _ = self.parts[domain][local]
        pos_domain, pos_local = self._locate(positive)
        return image, pid, camid, anchor, domain, self.parts[pos_domain][pos_local][0]
