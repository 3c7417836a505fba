"""GenerationGrid: the generated images of a GAN method for fixed pairs, at every validation."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch

from reidlab.callbacks.figures import figure_folder, log_figure
from reidlab.datasets import Record, ReIDImageDataset


def fixed_pairs(records: list[Record], num_pairs: int) -> list[tuple[Record, Record]]:
    """``num_pairs`` anchor / positive pairs of distinct identities spread over the
    training set, the same at every call: each identity's first image and its first image
    from another camera (or its second image)."""
    by_pid: dict[int, list[Record]] = {}
    for record in records:
        by_pid.setdefault(record.pid, []).append(record)
    pids = sorted(p for p, rs in by_pid.items() if len(rs) > 1)
    chosen = [pids[i] for i in np.linspace(0, len(pids) - 1, num_pairs).round().astype(int)
              ] if pids else []
    pairs = []
    for pid in dict.fromkeys(chosen):
        anchor, *rest = by_pid[pid]
        other = next((r for r in rest if r.camid != anchor.camid), rest[0])
        pairs.append((anchor, other))
    return pairs


def generation_figure(columns: dict[str, torch.Tensor]) -> plt.Figure:
    """One row per pair, one column per entry of ``columns`` (name -> ``(N, 3, H, W)``
    images in [0, 1])."""
    names = list(columns)
    rows = len(next(iter(columns.values())))
    fig, axes = plt.subplots(rows, len(names), figsize=(len(names) * 1.0, rows * 1.9),
                             squeeze=False)
    for c, name in enumerate(names):
        images = columns[name].detach().float().cpu().permute(0, 2, 3, 1).numpy()
        for r in range(rows):
            ax = axes[r, c]
            ax.imshow(images[r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
    fig.tight_layout()
    return fig


class GenerationGrid(pl.Callback):
    """At every validation (not the sanity check), log the module's generations for a few
    fixed anchor / positive pairs of the training set: W&B / TensorBoard image, or a PNG in
    ``<log dir>/figures`` (:func:`~reidlab.callbacks.log_figure`).

    The module provides ``generation_examples(anchors, positives, labels) -> {column name:
    images in [0, 1]}`` (e.g. :meth:`reidlab.modules.ISGAN.generation_examples`); the
    DataModule's training records come from its ``data`` (or ``source_data``) and are read
    with its test transform. A module with ``generates_across_domains = True`` (DG-Net++)
    also gets ``targets=``: as many fixed target training images, spread over the set.

    Args:
        num_pairs: rows of the grid.
        key: the logged name.
    """

    def __init__(self, num_pairs: int = 4, key: str = "val/generations") -> None:
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        self.num_pairs, self.key = num_pairs, key

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        folder = figure_folder(trainer)  # collective: before the rank check
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        data = getattr(dm, "data", None) or getattr(dm, "source_data", None)
        pairs = fixed_pairs(data.train, self.num_pairs) if data is not None else []
        if not pairs:
            return
        dataset = ReIDImageDataset([r for pair in pairs for r in pair], dm.test_transform)
        images = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(pl_module.device)
        labels = torch.tensor([a.pid for a, _ in pairs], device=pl_module.device)
        extra = {}
        target = getattr(dm, "target_data", None)
        if getattr(pl_module, "generates_across_domains", False) and target is not None:
            records = target.train
            picks = np.linspace(0, len(records) - 1, len(pairs)).round().astype(int)
            target_set = ReIDImageDataset([records[i] for i in picks], dm.test_transform)
            extra["targets"] = torch.stack([target_set[i][0] for i in range(len(picks))]
                                           ).to(pl_module.device)
        columns = pl_module.generation_examples(images[0::2], images[1::2], labels, **extra)
        log_figure(trainer, self.key, generation_figure(columns), folder)
