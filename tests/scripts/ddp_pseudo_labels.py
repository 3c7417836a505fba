"""SBase for one short epoch on CPU with 1 or 2 processes (gloo): what every rank holds.

Usage: python ddp_pseudo_labels.py WORLD OUT_PREFIX [MODEL]   (REIDLAB_CACHE: a temp folder)

MODEL: ``sbase`` (default) or ``dcdfa_off`` (DCDFA with L_CID, L_Domain and L_RReID^b all
switched off: its attention takes part in no loss, and DDP must still see it used).

Each rank writes OUT_PREFIX.rank{r}.pt with the pseudo-labels (of fit start and after
epoch 0), the target features they were clustered from, and the teacher, memory and
classifier tensors at the end, so the test can compare ranks and process counts.
"""

import sys

import pytorch_lightning as pl
import torch

from reidlab.callbacks import MeanTeacher, PseudoLabeling
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import DCDFA, SBase

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 7, "height": 64, "width": 32}


class Recorder(PseudoLabeling):
    """PseudoLabeling that keeps what it clustered."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.rounds: list[dict] = []

    def cluster(self, features, progress=False):
        labels = super().cluster(features, progress)
        self.rounds.append({"features": features.clone()})
        return labels

    def recluster(self, trainer, pl_module, for_epoch=None):
        labels = super().recluster(trainer, pl_module, for_epoch)
        if trainer.is_global_zero:
            self.rounds[-1]["labels"] = labels.copy()
        else:
            self.rounds.append({"labels": labels.copy()})
        return labels


if __name__ == "__main__":
    world, prefix = int(sys.argv[1]), sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else "sbase"
    pl.seed_everything(0)
    dm = CrossDomainDataModule(source_kwargs=TINY, target_kwargs=TINY, height=32, width=16,
                               num_ids=2, num_instances=4, num_workers=0, iters_per_epoch=2)
    net = dict(num_classes=8, backbone="resnet18", backbone_width=0.25, weights=None)
    model = (SBase(**net) if name == "sbase"
             else DCDFA(cid=False, domain=False, base_reid=False, **net))
    labeler = Recorder(eps=0.9, min_samples=2, k1=6, k2=2)
    trainer = pl.Trainer(accelerator="cpu", devices=world,
                         strategy="ddp" if world > 1 else "auto", max_epochs=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False,
                         callbacks=[labeler, MeanTeacher(alpha=0.9)])
    trainer.fit(model, dm)
    torch.save({"rounds": labeler.rounds,
                "teacher": {k: v.clone() for k, v in model.teacher.state_dict().items()},
                "memory": {k: v.clone() for k, v in model.memory.state_dict().items()},
                "target_classifier": model.target_classifier.detach().clone()},
               f"{prefix}.rank{trainer.global_rank}.pt")
