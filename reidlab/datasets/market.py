"""Parsers for the Market-1501 folder layout: Market-1501, DukeMTMC-reID and CUHK03-NP.

Layout (as distributed)::

    <top>/bounding_box_train/0002_c1s1_000451_03.jpg
    <top>/query/...
    <top>/bounding_box_test/...

The file name starts with ``<pid>_c<cam>``. Person id -1 marks junk images and is
dropped; id 0 marks distractors and is kept in the gallery. Files that are not
images (``Thumbs.db`` ships with Market-1501) and hidden files (macOS ``._*``) are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from reidlab.datasets.base import (
    DatasetFormatError,
    Record,
    ReIDDataset,
    find_dataset_dir,
    relabel,
    report_bad_names,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` in sorted order; a clear error if it is missing."""
    if not folder.is_dir():
        raise DatasetFormatError(f"missing folder {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def parse_market_folder(folder: Path, drop_junk: bool = True) -> list[Record]:
    """Records of one Market-layout folder, camera ids made 0-based."""
    records, bad = [], []
    for path in list_images(folder):
        match = NAME_PATTERN.match(path.name)
        if match is None or int(match.group(2)) < 1:
            bad.append(path.name)
            continue
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1 and drop_junk:
            continue
        records.append(Record(str(path), pid, cam - 1))
    report_bad_names(bad, folder, "'<pid>_c<camera>...' (e.g. 0002_c1s1_000451_03.jpg)")
    return records


class MarketLayoutDataset(ReIDDataset):
    """A dataset in the Market-1501 layout below ``root``.

    Args:
        root: the dataset's top folder (the one holding ``bounding_box_train``) or its parent.
    """

    name = "market-layout"
    top_folders: tuple[str, ...] = ()
    train_dir, query_dir, gallery_dir = "bounding_box_train", "query", "bounding_box_test"

    def __init__(self, root: str | Path) -> None:
        self.root = self._locate(root)
        self.train = relabel(parse_market_folder(self.root / self.train_dir))
        self.query = parse_market_folder(self.root / self.query_dir)
        self.gallery = parse_market_folder(self.root / self.gallery_dir)
        self._finish(self.root)

    def _locate(self, root: str | Path) -> Path:
        return find_dataset_dir(root, self.top_folders, self.train_dir)


class Market1501(MarketLayoutDataset):
    """Market-1501 (Zheng et al. 2015): 751 train ids, 6 cameras."""

    name = "market1501"
    top_folders = ("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15",
                   "Market-1501", "market1501", "Market1501")


class DukeMTMCreID(MarketLayoutDataset):
    """DukeMTMC-reID (Zheng et al. 2017): 702 train ids, 8 cameras."""

    name = "dukemtmcreid"
    top_folders = ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid",
                   "dukemtmcreid")


class CUHK03NP(MarketLayoutDataset):
    """CUHK03 in the new protocol (Zhong et al. 2017): 767 train / 700 test ids.

    Args:
        root: the ``cuhk03-np`` folder (holding ``detected/`` and ``labeled/``) or its parent.
        variant: ``"detected"`` or ``"labeled"`` bounding boxes.
    """

    name = "cuhk03np"
    top_folders = ("cuhk03-np", "CUHK03-NP", "cuhk03_np", "cuhk03np")

    def __init__(self, root: str | Path, variant: str = "detected") -> None:
        if variant not in ("detected", "labeled"):
            raise DatasetFormatError(
                f"CUHK03-NP variant must be 'detected' or 'labeled', got {variant!r}")
        self.variant = variant
        super().__init__(root)

    def _locate(self, root: str | Path) -> Path:
        top = find_dataset_dir(root, self.top_folders, f"{self.variant}/{self.train_dir}")
        return top / self.variant
