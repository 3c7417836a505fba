"""ISGAN through its three stages (one epoch each) on 2 CPU processes (gloo DDP).

Usage: python ddp_isgan.py OUT_PREFIX   (REIDLAB_CACHE: a temp folder)

Each rank writes OUT_PREFIX.rank{r}.pt with the stage of every epoch, the dataset indices
of its batches, the initial state dict and the final parameters, so the test can compare
the ranks (BN running statistics differ after the last step: DDP broadcasts rank 0's at the
next forward).
"""

import sys

import pytorch_lightning as pl
import torch

from reidlab.datamodules import ReIDDataModule
from reidlab.modules import ISGAN

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.stages, self.batches = [], []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.stages.append(pl_module.stage)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch[3].tolist())


if __name__ == "__main__":
    prefix = sys.argv[1]
    pl.seed_everything(0)
    dm = ReIDDataModule(dataset="synthetic:mall", dataset_kwargs=TINY, height=64, width=32,
                        num_ids=2, num_instances=4, num_workers=0, erasing_p=0.0, padding=0)
    model = ISGAN(num_classes=8, backbone="resnet18", backbone_width=0.25, weights=None,
                  image_size=(64, 32), generator_width=0.125, discriminator_width=0.25,
                  part_dim=16, code_dim=8, noise_dim=8, stage_epochs=(1, 1, 1))
    recorder = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         max_epochs=3, limit_train_batches=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[recorder])
    trainer.fit(model, dm)
    torch.save({"stages": recorder.stages, "batches": recorder.batches,
                "initial": recorder.initial,
                "params": {k: v.detach().clone() for k, v in model.named_parameters()}},
               f"{prefix}.rank{trainer.global_rank}.pt")
