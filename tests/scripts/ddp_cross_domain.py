"""2-process CPU DDP (gloo) smoke run of a trivial module fed by CrossDomainDataModule.

Usage: python ddp_cross_domain.py OUT.json   (REIDLAB_CACHE should point at a temp folder)

Rank 0 writes, per epoch and side, the dataset indices and pids every rank trained on,
so the calling test can check that ranks saw disjoint, equally many batches and that the
pseudo-labels set after epoch 0 reached the target loader of epoch 1.
"""

import json
import sys

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from reidlab.datamodules import CrossDomainDataModule

SMALL = {"num_train_ids": 12, "num_test_ids": 6, "images_per_id": 8, "height": 32, "width": 16}


class Probe(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.seen: dict[str, list[torch.Tensor]] = {"source": [], "target": []}
        self.log_rows: list[dict] = []

    def training_step(self, batch, batch_idx):
        loss = 0.0
        for side, (images, pids, _camids, indices) in batch.items():
            self.seen[side].append(torch.stack([indices, pids], 1))
            loss = loss + self.linear(images.mean((2, 3))).pow(2).mean()
        return loss

    def on_train_epoch_end(self) -> None:
        row = {"epoch": self.current_epoch}
        for side, items in self.seen.items():
            row[side] = self.all_gather(torch.cat(items)).tolist()  # (world, n, 2)
            items.clear()
        self.log_rows.append(row)
        dm = self.trainer.datamodule
        n = len(dm.target_data.train)
        labels = np.arange(n) // 3
        labels[::7] = -1  # outliers
        dm.set_pseudo_labels(labels)
        if self.global_rank == 0:
            with open(sys.argv[1], "w") as f:
                json.dump({"rows": self.log_rows, "labels": labels.tolist()}, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    dm = CrossDomainDataModule(
        source="synthetic:mall", target="synthetic:street", source_kwargs=SMALL,
        target_kwargs=SMALL, height=32, width=16, num_ids=3, num_instances=2,
        num_workers=0, seed=0,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
        use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(), datamodule=dm)
