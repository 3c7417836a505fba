"""DGNetPP through round 0 and one self-training round (one epoch each) on 2 CPU processes
(gloo DDP), with the re-ranked clustering of every round.

Usage: python ddp_dgnet.py OUT_PREFIX   (REIDLAB_CACHE: a temp folder)

Each rank writes OUT_PREFIX.rank{r}.pt with the round of every epoch, the dataset indices
of its batches, the initial state dict and the final parameters.
"""

import sys

import pytorch_lightning as pl
import torch

from reidlab.callbacks import PseudoLabeling
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import DGNetPP

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 6, "height": 64, "width": 32}


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.rounds, self.batches = [], []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.rounds.append(pl_module.round)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["pairs"][3].tolist())


if __name__ == "__main__":
    prefix = sys.argv[1]
    pl.seed_everything(0)
    dm = CrossDomainDataModule(source="synthetic:mall", target="synthetic:street",
                               source_kwargs=TINY, target_kwargs=TINY, height=64, width=32,
                               batches="domain_pairs", pair_batch_size=4, num_workers=0,
                               erasing_p=0.0, padding=0)
    model = DGNetPP(num_classes=8, w_teacher=0, max_clusters=40, round0_epochs=1,
                    round_epochs=1, backbone="resnet18", backbone_width=0.25, weights=None,
                    structure_channels=(4, 8, 8, 8), code_channels=16, residual_blocks=2,
                    mlp_hidden=16, decoder_channels=(8, 8), discriminator_scales=2,
                    discriminator_width=8, discriminator_blocks=1)
    recorder = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         reload_dataloaders_every_n_epochs=1,
                         callbacks=[PseudoLabeling(distance="reranked", eps=0.45, min_samples=2,
                                                   k1=5, k2=2), recorder])
    trainer.fit(model, dm)
    torch.save({"rounds": recorder.rounds, "batches": recorder.batches,
                "initial": recorder.initial,
                "params": {k: v.detach().clone() for k, v in model.named_parameters()}},
               f"{prefix}.rank{trainer.global_rank}.pt")
