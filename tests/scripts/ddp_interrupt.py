"""SBase under 2-process CPU DDP (gloo), interrupted by a signal that reaches one rank only.

Usage: python ddp_interrupt.py OUT_JSON SIGNAL RANK   (REIDLAB_CACHE: a temp folder)

Both ranks must stop after the same batch (no rank waits in a collective for the other)
and save one checkpoint; OUT_JSON gets each rank's exit status and the saved step.
"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from reidlab.callbacks import (
    InterruptCheckpoint,
    MeanTeacher,
    PseudoLabeling,
    TrainingInterrupted,
)
from reidlab.datamodules import CrossDomainDataModule
from reidlab.modules import SBase
from tests.helpers import SendSignal

TINY = {"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 7, "height": 64, "width": 32}

if __name__ == "__main__":
    out, name, rank = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    pl.seed_everything(0)
    dm = CrossDomainDataModule(source_kwargs=TINY, target_kwargs=TINY, height=32, width=16,
                               num_ids=2, num_instances=4, num_workers=0, iters_per_epoch=3)
    model = SBase(num_classes=8, backbone="resnet18", backbone_width=0.25, weights=None)
    saver = InterruptCheckpoint(dirpath=out.parent / "ckpt")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, reload_dataloaders_every_n_epochs=1,
                         use_distributed_sampler=False, default_root_dir=str(out.parent),
                         callbacks=[PseudoLabeling(eps=0.9, min_samples=2, k1=6, k2=2),
                                    MeanTeacher(alpha=0.9), saver,
                                    SendSignal(name, step=1, rank=rank)])
    try:
        trainer.fit(model, dm)
        code = 0
    except TrainingInterrupted as stop:
        code = stop.code
    ckpt = saver.checkpoint_path(trainer)
    step = torch.load(ckpt, weights_only=False)["global_step"] if ckpt.is_file() else None
    Path(f"{out}.rank{trainer.global_rank}").write_text(json.dumps({"code": code, "step": step}))
