"""Validate a seeded (untrained) Baseline with RetrievalEvaluation on N CPU processes.

Usage: python ddp_validate.py DEVICES OUT.json   (REIDLAB_CACHE should point at a temp folder)
Rank 0 writes the metrics, so the test can compare 1 and 2 processes.
"""

import json
import sys

import numpy as np
import pytorch_lightning as pl
import torch

from reidlab.callbacks import RetrievalEvaluation
from reidlab.datamodules import ReIDDataModule
from reidlab.modules import Baseline

TINY = {"num_train_ids": 6, "num_test_ids": 7, "images_per_id": 7, "height": 32, "width": 16}

if __name__ == "__main__":
    devices, out = int(sys.argv[1]), sys.argv[2]
    pl.seed_everything(0)
    dm = ReIDDataModule("synthetic:street", dataset_kwargs=TINY, height=32, width=16,
                        num_workers=0, eval_batch_size=5)
    model = Baseline(num_classes=dm.num_classes, backbone="resnet18", backbone_width=0.25,
                     weights=None)
    evaluation = RetrievalEvaluation(num_figure_queries=3)
    trainer = pl.Trainer(accelerator="cpu", devices=devices,
                         strategy="ddp" if devices > 1 else "auto", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[evaluation])
    trainer.validate(model, datamodule=dm)
    if trainer.global_rank == 0:
        result = evaluation.last | {"num_eval": len(dm.eval_records),
                                    "ranked": evaluation.last_ranked}
        if devices == 1:  # brute-force ranking of the shown queries, for the test to compare
            feats = torch.cat([model.extract_features(b[0]) for b in dm.val_dataloader()])
            feats = torch.nn.functional.normalize(feats, dim=1).numpy()
            recs, nq = dm.eval_records, dm.num_query
            reference = {}
            for q in map(int, evaluation.last_ranked):
                gal = [g for g in range(nq, len(recs))
                       if not (recs[g].pid == recs[q].pid and recs[g].camid == recs[q].camid)]
                dist = 1 - feats[gal] @ feats[q]
                reference[q] = [gal[i] for i in np.argsort(dist, kind="stable")[:10]]
            result["reference"] = reference
        with open(out, "w") as f:
            json.dump(result, f)
