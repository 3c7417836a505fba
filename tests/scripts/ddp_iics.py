"""IICS for one round (1 intra-camera + 1 inter-camera epoch) on CPU with 1 or 2 processes.

Usage: python ddp_iics.py WORLD OUT_PREFIX   (REIDLAB_CACHE: a temp folder)

Each rank writes OUT_PREFIX.rank{r}.pt with the labels of both stages, the sampler the
DataModule was given, and the parameters at the end, so the test can compare ranks and
process counts.
"""

import sys

import pytorch_lightning as pl
import torch

from reidlab.callbacks import IICSStages
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import IICS

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 7, "height": 64, "width": 32}


class Recorder(IICSStages):
    """IICSStages that keeps every stage's labels and sampler."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.stages: list[dict] = []

    def recluster(self, trainer, pl_module, for_epoch=None, reset_optimizer=True):
        labels = super().recluster(trainer, pl_module, for_epoch, reset_optimizer)
        self.stages.append({"labels": labels.copy(),
                            "sampler": trainer.datamodule.label_sampler})
        return labels


if __name__ == "__main__":
    world, prefix = int(sys.argv[1]), sys.argv[2]
    pl.seed_everything(0)
    dm = CrossDomainDataModule(source=None, target_kwargs=TINY, height=32, width=16,
                               num_ids=2, num_instances=4, num_per_camera=2, num_workers=0,
                               iters_per_epoch=2)
    model = IICS(backbone="resnet18", backbone_width=0.25, weights=None, rounds=1,
                 intra_epochs=1, inter_epochs=1, intra_clusters=4, inter_clusters=8)
    stages = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=world,
                         strategy="ddp" if world > 1 else "auto", max_epochs=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False,
                         callbacks=[stages])
    trainer.fit(model, dm)
    torch.save({"stages": stages.stages,
                "params": {k: v.detach().clone() for k, v in model.named_parameters()}},
               f"{prefix}.rank{trainer.global_rank}.pt")
