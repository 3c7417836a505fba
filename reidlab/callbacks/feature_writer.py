"""FeatureWriter: ``reidlab predict`` writes the test-time features to a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torchmetrics.utilities.distributed import gather_all_tensors

FORMATS = (".pt", ".npz")


class FeatureWriter(BasePredictionWriter):
    """Write the features of a predict pass with the images' paths, pids and camids.

    Consumes what :meth:`~reidlab.modules.base.ReIDModule.predict_step` returns (features,
    pids, camids and dataset indices; the DataModule's ``eval_records``, or the folder of
    :class:`~reidlab.datamodules.ImageFolderDataModule`, give the paths). Under DDP every
    rank's shard is gathered and rank 0 writes one file, rows in dataset order.

    The file (``.pt``: ``torch.save`` of a dict; ``.npz``: ``numpy.savez``) holds
    ``features`` ``(N, D)`` float32, ``pids`` and ``camids`` ``(N,)`` (-1 where unknown),
    ``paths`` (N strings) and, for query + gallery sets, ``num_query`` (the first
    ``num_query`` rows are queries).

    Args:
        output: the file to write; its suffix picks the format (``.pt`` or ``.npz``).
    """

    def __init__(self, output: str | Path = "features.pt") -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        if self.output.suffix not in FORMATS:
            raise ValueError(f"FeatureWriter output {self.output} must end in one of {FORMATS}")
        self._parts: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._parts = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        self._parts.append({k: prediction[k].detach() for k in
                            ("features", "pids", "camids", "indices")})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._parts:
            return
        cols = {k: torch.cat([p[k] for p in self._parts]) for k in self._parts[0]}
        self._parts = []
        if trainer.world_size > 1:
            cols = {k: torch.cat(gather_all_tensors(v)) for k, v in cols.items()}
        if not trainer.is_global_zero:
            return
        order = torch.argsort(cols["indices"])
        cols = {k: v[order].cpu() for k, v in cols.items()}
        indices = cols.pop("indices")
        dm = trainer.datamodule
        records = dm.eval_records
        out = {"features": cols["features"].float(), "pids": cols["pids"].long(),
               "camids": cols["camids"].long(),
               "paths": [records[i].path for i in indices.tolist()]}
        if getattr(dm, "num_query", 0):
            out["num_query"] = int(dm.num_query)
        self.write(out)
        rank_zero_info(f"features of {len(indices)} images written to {self.output}")

    def write(self, out: dict) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.output.suffix == ".pt":
            torch.save(out, self.output)
        else:
            np.savez(self.output, **{k: (v.numpy() if isinstance(v, torch.Tensor)
                                         else np.asarray(v)) for k, v in out.items()})
