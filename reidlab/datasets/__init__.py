"""Dataset parsers, the synthetic domain generator and the image dataset.

Datasets are named in configs by a registered name plus a root folder, or as
``synthetic:<domain>`` (generated into a cache folder on first use)::

    build_dataset("market1501", root="/data")        # /data/Market-1501-v15.09.15/...
    build_dataset("msmt17", root="/data", combine_val=True)
    build_dataset("synthetic:street", num_train_ids=50)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidlab.datasets.base import DatasetFormatError, Record, ReIDDataset
from reidlab.datasets.custom import CustomReID
from reidlab.datasets.image_dataset import ReIDImageDataset, read_image
from reidlab.datasets.market import CUHK03NP, DukeMTMCreID, Market1501
from reidlab.datasets.msmt17 import MSMT17
from reidlab.datasets.synthetic import SYNTHETIC_DOMAINS, SyntheticReID, generate_domain

DATASETS: dict[str, type[ReIDDataset]] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "msmt17": MSMT17,
    "cuhk03np": CUHK03NP,
    "custom": CustomReID,
}


def build_dataset(name: str, root: str | Path | None = None, **kwargs: Any) -> ReIDDataset:
    """Parse a dataset by registered name, or generate/load ``synthetic:<domain>``.

    Args:
        name: one of :data:`DATASETS` or ``synthetic:<domain>`` with a domain of
            :data:`SYNTHETIC_DOMAINS`.
        root: the dataset's top folder or its parent (optional for synthetic data: the
            cache folder is used).
        **kwargs: passed to the parser (e.g. ``variant`` for CUHK03-NP, ``combine_val``
            for MSMT17, sizes and ``seed`` for synthetic data).
    """
    if name.startswith("synthetic:"):
        return SyntheticReID(name.split(":", 1)[1], root=root, **kwargs)
    if name not in DATASETS:
        known = ", ".join([*DATASETS, *(f"synthetic:{d}" for d in SYNTHETIC_DOMAINS)])
        raise ValueError(f"unknown dataset {name!r}; known: {known}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root folder (the dataset's top folder "
                         "or its parent)")
    return DATASETS[name](root, **kwargs)


__all__ = [
    "CUHK03NP", "DATASETS", "MSMT17", "SYNTHETIC_DOMAINS", "CustomReID", "DatasetFormatError",
    "DukeMTMCreID", "Market1501", "ReIDDataset", "ReIDImageDataset", "Record", "SyntheticReID",
    "build_dataset", "generate_domain", "read_image",
]
