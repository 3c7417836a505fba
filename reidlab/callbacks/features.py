"""Features of a whole training set, from every rank, in dataset order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
from torchmetrics.utilities.distributed import gather_all_tensors
from tqdm.auto import tqdm

from reidlab.datasets import Record


@torch.no_grad()
def collect_features(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    records: Sequence[Record],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    flip: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Features ``(N, D)`` of ``records`` (test transform), row ``i`` for ``records[i]``.

    Each rank extracts its shard (the DataModule's evaluation loader), the shards are
    gathered with their dataset indices and de-duplicated, so every rank returns the same
    float32 CPU tensor. The module is put in eval mode for the pass and restored after.

    Args:
        trainer: the running trainer (its DataModule provides ``eval_dataloader``).
        pl_module: the module, in whatever mode; its device is used.
        records: the samples.
        feature_fn: images -> features (e.g. the teacher's pooled feature).
        flip: average the features of each image and its horizontal mirror.
        desc: progress-bar label (shown on rank 0 when the trainer shows progress).
    """
    loader = trainer.datamodule.eval_dataloader(records)
    was_training = pl_module.training
    pl_module.eval()
    feats, indices = [], []
    show = trainer.is_global_zero and trainer.progress_bar_callback is not None
    try:
        for batch in tqdm(loader, desc=desc, disable=not show, leave=False):
            images = batch[0].to(pl_module.device)
            f = feature_fn(images).float()
            if flip:
                f = (f + feature_fn(images.flip(-1)).float()) / 2
            feats.append(f)
            indices.append(batch[3].to(pl_module.device))
    finally:
        pl_module.train(was_training)
    dim = feats[0].shape[1] if feats else 0
    feats = torch.cat(feats) if feats else torch.empty(0, dim, device=pl_module.device)
    indices = (torch.cat(indices) if indices
               else torch.empty(0, dtype=torch.long, device=pl_module.device))
    if trainer.world_size > 1:
        feats = torch.cat(gather_all_tensors(feats))
        indices = torch.cat(gather_all_tensors(indices))
    out = torch.empty(len(records), feats.shape[1], dtype=torch.float32)
    seen = torch.zeros(len(records), dtype=torch.bool)
    indices = indices.cpu()
    out[indices] = feats.cpu()
    seen[indices] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {len(records)} samples got no feature")
    return out
