"""A folder of images with no identities, for feature export (``reidlab predict``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from reidlab.datamodules.loader import data_loader
from reidlab.datamodules.transforms import build_transforms
from reidlab.datasets import Record, ReIDImageDataset
from reidlab.datasets.base import DatasetFormatError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class ImageFolderDataModule(pl.LightningDataModule):
    """Every image under ``root`` (recursively, sorted by path), pid and camid -1, with the
    test transform: the predict loader of a plain folder.

    Args:
        root: the folder.
        height: image height.
        width: image width.
        eval_batch_size: batch size.
        num_workers: loader worker processes.
        num_classes: what the CLI links to the model's ``num_classes`` (a folder has no
            classes; ``reidlab predict`` sets the checkpoint's).

        reidlab predict --model Baseline --ckpt_path CKPT --data ImageFolderDataModule \
            --data.root photos/ --trainer.default_root_dir out/   # -> out/features.pt
    """

    def __init__(self, root: str, height: int = 256, width: int = 128, eval_batch_size: int = 128,
                 num_workers: int = 4, num_classes: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise DatasetFormatError(f"ImageFolderDataModule: {folder} is not a folder")
        self.records = [Record(str(p), -1, -1) for p in sorted(folder.rglob("*"))
                        if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.records:
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetFormatError(f"ImageFolderDataModule: no image ({kinds}) under {folder}")
        self.transform = build_transforms(height, width, train=False)
        self.num_classes = num_classes

    @property
    def eval_records(self) -> list[Record]:
        return self.records

    def predict_dataloader(self) -> DataLoader:
        hp = self.hparams
        return data_loader(ReIDImageDataset(self.records, self.transform),
                           batch_size=hp.eval_batch_size, num_workers=hp.num_workers)
