"""Parser for MSMT17 (Wei et al., CVPR 2018), versions V1 and V2.

Layout (as distributed)::

    MSMT17_V1/train/0000/0000_000_01_0303morning_0015_0.jpg
    MSMT17_V1/test/...
    MSMT17_V1/list_train.txt   list_val.txt   list_query.txt   list_gallery.txt

V2 has ``mask_train_v2/`` and ``mask_test_v2/`` instead of ``train/`` and ``test/``.
Each list line is ``<relative path> <pid>``; train and val paths are relative to the
train folder, query and gallery paths to the test folder. The camera is the third
``_``-separated field of the file name (``01`` .. ``15``), made 0-based here.
"""

from __future__ import annotations

import re
from pathlib import Path

from reidlab.datasets.base import DatasetFormatError, Record, ReIDDataset, relabel

#: (train folder, test folder) per version.
VERSION_DIRS = {1: ("train", "test"), 2: ("mask_train_v2", "mask_test_v2")}
#: Top folder names tried below ``root``, per version, in order.
TOP_FOLDERS = {
    1: ("MSMT17_V1", "msmt17/MSMT17_V1", "MSMT17", "msmt17/MSMT17"),
    2: ("MSMT17_V2", "msmt17/MSMT17_V2", "MSMT17", "msmt17/MSMT17"),
}
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
CAMERA_FIELD = re.compile(r"^\d{2}$")
NUM_CAMERAS = 15
_SHOWN = 5


def _detect_version(folder: Path, versions: tuple[int, ...]) -> int | None:
    """The first of ``versions`` whose train folder ``folder`` holds, else ``None``."""
    for version in versions:
        if (folder / VERSION_DIRS[version][0]).is_dir():
            return version
    return None


def _first_few(items: list[str]) -> str:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


def parse_msmt_list(list_file: Path, image_dir: Path) -> list[Record]:
    """Records of one MSMT17 list file whose paths are relative to ``image_dir``.

    Raises:
        DatasetFormatError: the file is missing or empty, a line is not
            ``<relative path> <pid>`` with a camera field ``01``..``15`` in the file name,
            or a listed image does not exist. The first few offenders are shown.
    """
    if not list_file.is_file():
        raise DatasetFormatError(f"missing MSMT17 list file {list_file}")
    records: list[Record] = []
    bad: list[str] = []
    missing: list[str] = []
    with list_file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                bad.append(f"line {lineno}: {line.strip()!r}")
                continue
            rel, pid = fields[0], int(fields[1])
            name_fields = Path(rel).name.split("_")
            cam = name_fields[2] if len(name_fields) > 2 else ""
            if not CAMERA_FIELD.match(cam) or not 1 <= int(cam) <= NUM_CAMERAS:
                bad.append(f"line {lineno}: {line.strip()!r} (no camera field 01..15)")
                continue
            path = image_dir / rel
            if not path.is_file():
                missing.append(f"line {lineno}: {path}")
                continue
            records.append(Record(str(path), pid, int(cam) - 1))
    if bad:
        raise DatasetFormatError(
            f"{len(bad)} line(s) of {list_file} do not parse; expected '<relative path> <pid>' "
            f"with a file name like 0000_000_01_0303morning_0015_0.jpg (camera = third field): "
            f"{_first_few(bad)}"
        )
    if missing:
        raise DatasetFormatError(
            f"{len(missing)} image(s) listed in {list_file} do not exist: {_first_few(missing)}"
        )
    if not records:
        raise DatasetFormatError(f"MSMT17 list file {list_file} has no entries")
    return records


class MSMT17(ReIDDataset):
    """MSMT17 (Wei et al., CVPR 2018): 1,041 train ids, 3,060 test ids, 15 cameras.

    Args:
        root: the dataset's top folder (``MSMT17_V1``, ``MSMT17_V2``, ``MSMT17``) or its
            parent (also ``msmt17/MSMT17_V1`` below it, as torchreid lays it out).
        combine_val: add ``list_val.txt`` to the train split (train ids are relabelled
            over the union). By default the train split is ``list_train.txt`` only.
        version: ``1`` or ``2`` to pick a version when ``root`` is a parent holding both;
            by default the version is detected (V1 first) from the train folder found.

    Attributes:
        version: the version that was loaded (1 or 2).
        root: the resolved top folder.
    """

    name = "msmt17"

    def __init__(
        self, root: str | Path, combine_val: bool = False, version: int | None = None
    ) -> None:
        if version not in (None, 1, 2):
            raise DatasetFormatError(f"MSMT17 version must be 1, 2 or None, got {version!r}")
        self.root, self.version = self._locate(Path(root).expanduser().resolve(), version)
        self.combine_val = combine_val
        train_dir, test_dir = (self.root / d for d in VERSION_DIRS[self.version])
        for folder in (train_dir, test_dir):
            if not folder.is_dir():
                raise DatasetFormatError(f"missing MSMT17 folder {folder}")
        train = parse_msmt_list(self.root / "list_train.txt", train_dir)
        if combine_val:
            train += parse_msmt_list(self.root / "list_val.txt", train_dir)
        self.train = relabel(train)
        self.query = parse_msmt_list(self.root / "list_query.txt", test_dir)
        self.gallery = parse_msmt_list(self.root / "list_gallery.txt", test_dir)
        self._finish(self.root)

    @staticmethod
    def _locate(root: Path, version: int | None) -> tuple[Path, int]:
        if not root.is_dir():
            raise DatasetFormatError(f"dataset root {root} does not exist or is not a folder")
        versions = (version,) if version else (1, 2)
        candidates = [root] + [root / c for v in versions for c in TOP_FOLDERS[v]]
        for folder in candidates:
            found = _detect_version(folder, versions)
            if found is not None:
                return folder, found
        # A top folder with the list files but no image folder: name the missing folder.
        for folder in candidates:
            if (folder / "list_train.txt").is_file():
                v = version or 1
                raise DatasetFormatError(
                    f"missing MSMT17 folder {folder / VERSION_DIRS[v][0]}"
                    + ("" if version else f" (or {folder / VERSION_DIRS[2][0]} for V2)")
                )
        wanted = " or ".join(f"{VERSION_DIRS[v][0]}/" for v in versions)
        tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
        raise DatasetFormatError(
            f"could not find MSMT17 under {root}: expected a folder holding {wanted} and the "
            f"list files ({', '.join(LIST_FILES)}); tried {tried}"
        )
