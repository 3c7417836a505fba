"""Parser for users' own re-ID data: a listing file or a folder tree.

Listing (CSV or TSV, header row required)::

    path,pid,camid,split
    images/alice_c1_001.jpg,alice,1,train
    /abs/path/bob_c2_007.jpg,bob,2,query

Folder tree::

    <root>/train/<pid>/<image files>
    <root>/query/<pid>/<image files>
    <root>/gallery/<pid>/<image files>

Person ids may be any strings. Train ids are relabelled to ``0 .. N-1``. Query and
gallery ids keep their value when every id is an integer (so ``0`` can still mark
distractors) and are otherwise mapped to integers in sorted order of the names, the
same mapping for query and gallery. Id ``-1`` marks junk and is dropped. Camera values
(numbers or names, from the ``camid`` column or from the file name through
``camera_pattern``) are mapped to ``0 .. C-1`` in sorted order, the same mapping for
every split, so a 0-based contiguous ``camid`` column is kept as is.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from reidlab.datasets.base import DatasetFormatError, Record, ReIDDataset
from reidlab.datasets.market import IMAGE_SUFFIXES

SPLITS = ("train", "query", "gallery")
REQUIRED_COLUMNS = ("path", "pid", "split")
DELIMITERS = {".csv": ",", ".tsv": "\t"}
_SHOWN = 5
_INT = re.compile(r"^-?\d+$")


def _first_few(items: list[str]) -> str:
    more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


def _sorted_values(values: Iterable[str]) -> list[str]:
    """Distinct values, numerically sorted when all are integers, else as strings."""
    values = set(values)
    if all(_is_int(v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def _is_int(value: str) -> bool:
    return _INT.match(value) is not None


def _canonical(value: str) -> str:
    """Integers without leading zeros (``"0007"`` and ``"7"`` are the same id)."""
    return str(int(value)) if _is_int(value) else value


def _test_pid_map(names: Iterable[str]) -> dict[str, int]:
    """Query/gallery ids: integer ids keep their value, names map to 0..N-1 (sorted)."""
    ordered = _sorted_values(names)
    if all(_is_int(n) for n in ordered):
        return {n: int(n) for n in ordered}
    return {n: i for i, n in enumerate(ordered)}


class CustomReID(ReIDDataset):
    """A re-ID dataset from a listing file or a ``<split>/<pid>/<image>`` folder tree.

    Args:
        root: a folder, or a listing file (then ``listing`` is not needed). With no
            listing, ``root`` holds ``train/``, ``query/`` and ``gallery/``, each holding
            one folder per person (the folder name is the person id) with that person's
            images.
        listing: a CSV or TSV file (relative to ``root`` unless absolute) with a header
            row and the columns ``path``, ``pid``, ``split`` (``train``, ``query`` or
            ``gallery``) and ``camid``; without a ``camid`` column the camera is read from
            the file name with ``camera_pattern``. Other columns are ignored. Image paths
            are relative to the listing's folder or absolute. The delimiter comes from the
            extension (``.csv``: comma, ``.tsv``: tab) or is sniffed from the header
            (``.txt`` and others: comma, tab, semicolon or ``|``).
        camera_pattern: a regular expression searched in each image's file name whose
            first group is the camera (e.g. ``c(\\d+)`` finds 3 in ``0001_c3_12.jpg``).
            Used for the folder tree and for listings without a ``camid`` column. ``None``
            requires a ``camid`` column.
        name: the dataset's name in logs and summaries.

    Attributes:
        camera_names: the original camera value of each 0-based camera id.
        pid_names: the original person id of each query/gallery id.
        train_pid_names: the original person id of each relabelled train id.
        (Integer values are written without leading zeros: ``"0007"`` is ``"7"``.)

    Raises:
        DatasetFormatError: a missing root, listing, split folder or column, an unknown
            split value, cameras that cannot be parsed, listed images that do not exist or
            an empty split; the message names the file and the first few offenders.
    """

    def __init__(
        self,
        root: str | Path,
        listing: str | Path | None = None,
        camera_pattern: str | None = r"c(\d+)",
        name: str = "custom",
    ) -> None:
        self.name = name
        root = Path(root).expanduser().resolve()
        if listing is None and root.is_file():
            root, listing = root.parent, root.name
        if not root.is_dir():
            raise DatasetFormatError(f"dataset root {root} does not exist or is not a folder")
        self.root = root
        self.camera_pattern = re.compile(camera_pattern) if camera_pattern is not None else None
        if self.camera_pattern is not None and self.camera_pattern.groups < 1:
            raise DatasetFormatError(
                f"camera_pattern {camera_pattern!r} needs a group capturing the camera, "
                r"e.g. r'c(\d+)'"
            )
        if listing is None:
            self.listing = None
            rows = self._read_tree(root)
            where: Path = root
        else:
            self.listing = Path(listing).expanduser()
            if not self.listing.is_absolute():
                self.listing = root / self.listing
            rows = self._read_listing(self.listing)
            where = self.listing
        self._build(rows, where)
        self._finish(where)

    # -- readers: each returns {split: [(path, pid name, camera value)]} -----------------

    def _camera_from_name(self, file_name: str) -> str | None:
        assert self.camera_pattern is not None
        match = self.camera_pattern.search(file_name)
        return match.group(1) if match and match.group(1) else None

    def _read_tree(self, root: Path) -> dict[str, list[tuple[str, str, str]]]:
        if self.camera_pattern is None:
            raise DatasetFormatError(
                f"a folder tree ({root}) needs a camera_pattern to read cameras from file names"
            )
        rows: dict[str, list[tuple[str, str, str]]] = {}
        for split in SPLITS:
            split_dir = root / split
            if not split_dir.is_dir():
                raise DatasetFormatError(
                    f"missing folder {split_dir}: expected {root}/<split>/<pid>/<image> with "
                    f"splits {', '.join(SPLITS)} (or pass listing=... for a CSV/TSV listing)"
                )
            entries = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
            loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if loose:
                raise DatasetFormatError(
                    f"{len(loose)} image(s) lie directly in {split_dir}; expected one folder per "
                    f"person, {split_dir}/<pid>/<image>: {_first_few(loose)}"
                )
            split_rows, bad = [], []
            for pid_dir in (p for p in entries if p.is_dir()):
                for path in sorted(pid_dir.iterdir()):
                    if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    cam = self._camera_from_name(path.name)
                    if cam is None:
                        bad.append(f"{pid_dir.name}/{path.name}")
                        continue
                    split_rows.append((str(path), pid_dir.name, cam))
            if bad:
                raise DatasetFormatError(
                    f"{len(bad)} file name(s) in {split_dir} do not match camera_pattern "
                    f"{self.camera_pattern.pattern!r}: {_first_few(bad)}"
                )
            if not split_rows:
                raise DatasetFormatError(
                    f"the {split} split of {root} is empty: expected images in "
                    f"{split_dir}/<pid>/ (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            rows[split] = split_rows
        return rows

    def _read_listing(self, listing: Path) -> dict[str, list[tuple[str, str, str]]]:
        if not listing.is_file():
            raise DatasetFormatError(f"missing listing file {listing}")
        text = listing.read_text(encoding="utf-8-sig")
        lines = text.splitlines()
        if not lines or not lines[0].strip():
            raise DatasetFormatError(
                f"listing {listing} is empty: expected a header row "
                f"'path,pid,camid,split' and one row per image"
            )
        delimiter = DELIMITERS.get(listing.suffix.lower())
        if delimiter is None:
            try:
                delimiter = csv.Sniffer().sniff(lines[0], delimiters=",\t;|").delimiter
            except csv.Error as err:
                raise DatasetFormatError(
                    f"cannot detect the delimiter of listing {listing} from its header "
                    f"{lines[0]!r}: use a .csv (comma) or .tsv (tab) file"
                ) from err
        reader = csv.reader(lines, delimiter=delimiter)
        header = [h.strip().lower() for h in next(reader)]
        needed = list(REQUIRED_COLUMNS) + (["camid"] if self.camera_pattern is None else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetFormatError(
                f"listing {listing} has no column {', '.join(repr(c) for c in missing)}: a "
                f"header row with path, pid, camid, split is required (camid may be omitted "
                f"when camera_pattern is given); found header {header}"
            )
        col = {c: header.index(c) for c in (*REQUIRED_COLUMNS, "camid") if c in header}
        rows: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
        short, bad_split, bad_cam, absent = [], [], [], []
        for lineno, fields in enumerate(reader, start=2):
            if not any(f.strip() for f in fields):
                continue
            if len(fields) <= max(col.values()):
                short.append(f"line {lineno}: {delimiter.join(fields)!r}")
                continue
            rel, pid, split = (fields[col[c]].strip() for c in REQUIRED_COLUMNS)
            split = split.lower()
            if split not in rows:
                bad_split.append(f"line {lineno}: {split!r}")
                continue
            if "camid" in col:
                cam = fields[col["camid"]].strip() or None
            else:
                cam = self._camera_from_name(Path(rel).name)
            if cam is None:
                bad_cam.append(f"line {lineno}: {rel}")
                continue
            path = Path(rel).expanduser()
            path = path if path.is_absolute() else listing.parent / path
            if not path.is_file():
                absent.append(f"line {lineno}: {path}")
                continue
            rows[split].append((str(path), pid, cam))
        if short:
            raise DatasetFormatError(
                f"{len(short)} row(s) of listing {listing} have fewer fields than the header "
                f"{header}: {_first_few(short)}"
            )
        if bad_split:
            raise DatasetFormatError(
                f"{len(bad_split)} row(s) of listing {listing} have an unknown split; expected "
                f"one of {', '.join(SPLITS)}: {_first_few(bad_split)}"
            )
        if bad_cam:
            how = (
                "an empty camid"
                if "camid" in col
                else f"a file name not matching camera_pattern {self.camera_pattern.pattern!r}"
            )
            raise DatasetFormatError(
                f"{len(bad_cam)} row(s) of listing {listing} have {how}: {_first_few(bad_cam)}"
            )
        if absent:
            raise DatasetFormatError(
                f"{len(absent)} image(s) listed in {listing} do not exist: {_first_few(absent)}"
            )
        for split in SPLITS:
            if not rows[split]:
                raise DatasetFormatError(
                    f"the {split} split of listing {listing} is empty: expected rows with "
                    f"split '{split}'"
                )
        return rows

    # -- ids -----------------------------------------------------------------------------

    def _build(self, rows: dict[str, list[tuple[str, str, str]]], where: Path) -> None:
        rows = {
            s: [(path, _canonical(p), _canonical(c)) for path, p, c in rs if _canonical(p) != "-1"]
            for s, rs in rows.items()
        }
        self.camera_names = _sorted_values(c for rs in rows.values() for _, _, c in rs)
        cam_id = {c: i for i, c in enumerate(self.camera_names)}
        test_pids = _test_pid_map(p for s in ("query", "gallery") for _, p, _ in rows[s])
        self.pid_names = {v: k for k, v in test_pids.items()}
        train_names = _sorted_values(p for _, p, _ in rows["train"])
        self.train_pid_names = dict(enumerate(train_names))
        train_index = {p: i for i, p in enumerate(train_names)}
        self.train = [Record(path, train_index[p], cam_id[c]) for path, p, c in rows["train"]]
        self.query = [Record(path, test_pids[p], cam_id[c]) for path, p, c in rows["query"]]
        self.gallery = [Record(path, test_pids[p], cam_id[c]) for path, p, c in rows["gallery"]]
