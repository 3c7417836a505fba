"""Records and the common base of every dataset parser.

A parser turns a dataset folder, as distributed, into three lists of :class:`Record`:
``train``, ``query`` and ``gallery``. Camera ids are 0-based. Train person ids are
relabelled to ``0 .. num_train_pids - 1`` (classification targets); query and gallery
keep the dataset's own ids (only equality matters for retrieval; 0 marks distractors
in Market-style galleries).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from reidlab.errors import DatasetFormatError

log = logging.getLogger(__name__)

__all__ = ["DatasetFormatError", "Record", "find_dataset_dir"]


class Record(NamedTuple):
    """One image of a re-ID dataset."""

    path: str
    pid: int
    camid: int




def find_dataset_dir(root: str | Path, candidates: Sequence[str], marker: str) -> Path:
    """Resolve ``root`` to the dataset's own top folder.

    ``root`` may be the top folder itself (it contains ``marker``) or its parent
    (it contains one of ``candidates`` which contains ``marker``).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetFormatError(f"dataset root {root} does not exist or is not a folder")
    if (root / marker).exists():
        return root
    for name in candidates:
        if (root / name / marker).exists():
            return root / name
    tried = ", ".join(str(root / c / marker) for c in candidates)
    raise DatasetFormatError(
        f"could not find the dataset under {root}: expected {root / marker} "
        f"or one of {tried}"
    )


def relabel(records: Iterable[Record]) -> list[Record]:
    """Map person ids to ``0 .. n-1`` in sorted order of the original ids."""
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}, key=str))}
    if all(isinstance(p, int) for p in mapping):
        mapping = {pid: i for i, pid in enumerate(sorted(mapping))}
    return [Record(r.path, mapping[r.pid], r.camid) for r in records]


def require_nonempty(records: Sequence[Record], split: str, where: str | Path) -> None:
    if not records:
        raise DatasetFormatError(f"the {split} split of {where} is empty")


def report_bad_names(bad: Sequence[str], where: str | Path, expected: str) -> None:
    """Raise a clear error listing the first few file names that do not parse."""
    if bad:
        shown = ", ".join(bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DatasetFormatError(
            f"{len(bad)} file name(s) in {where} do not match the expected pattern "
            f"{expected}: {shown}{more}"
        )


class ReIDDataset:
    """Base class: ``train``, ``query`` and ``gallery`` lists of :class:`Record`.

    Subclasses fill the three lists in ``__init__`` and call :meth:`_finish`, which
    validates the splits and logs a summary table.
    """

    name: str = "reid"
    train: list[Record]
    query: list[Record]
    gallery: list[Record]

    def _finish(self, where: str | Path, check_query: bool = True) -> None:
        for split in ("train", "query", "gallery"):
            require_nonempty(getattr(self, split), split, where)
        if check_query:
            self._warn_unmatched_queries(where)
        log.info("%s loaded from %s\n%s", self.name, where, self.summary())

    def _warn_unmatched_queries(self, where: str | Path) -> None:
        gallery_cams: dict[int, set[int]] = {}
        for r in self.gallery:
            gallery_cams.setdefault(r.pid, set()).add(r.camid)
        unmatched = sorted(
            {q.pid for q in self.query if not (gallery_cams.get(q.pid, set()) - {q.camid})}
        )
        if unmatched:
            shown = ", ".join(map(str, unmatched[:5]))
            warnings.warn(
                f"{len(unmatched)} query id(s) in {where} have no gallery image from another "
                f"camera and will be skipped by the evaluation: {shown}"
                + (" ..." if len(unmatched) > 5 else ""),
                stacklevel=3,
            )

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    @property
    def num_cams(self) -> int:
        return len({r.camid for r in self.train + self.query + self.gallery})

    def summary(self) -> str:
        """A small table: ids, images and cameras per split."""
        rows = [("split", "ids", "images", "cameras")]
        for split in ("train", "query", "gallery"):
            recs = getattr(self, split)
            rows.append(
                (split, str(len({r.pid for r in recs})), str(len(recs)),
                 str(len({r.camid for r in recs})))
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={len(self.train)}, query={len(self.query)}, "
                f"gallery={len(self.gallery)})")
