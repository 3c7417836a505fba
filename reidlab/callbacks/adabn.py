"""AdaBN as a callback: BatchNorm statistics re-estimated on the target before evaluation."""

from __future__ import annotations

import pytorch_lightning as pl
from tqdm.auto import tqdm

from reidlab.nn.batchnorm import BATCH_NORMS, reestimate_bn_statistics


class AdaBN(pl.Callback):
    """Re-estimate every BatchNorm's running statistics on the target's training images
    (test transform, no labels) before validation and test, nothing else trained.

    With a direct-transfer checkpoint and ``reidlab validate`` this is the ``adabn``
    reference row: the strong, training-free UDA baseline (Li et al. 2017) that every UDA
    method has to beat. The images go through the module's test-time path
    (``test_features``); every BatchNorm of the module is reset first, so it is meant for
    evaluating a trained model, not for the middle of a fit. Under DDP every rank sees its
    shard and the statistics are averaged across ranks (equal shards up to one image).

    Args:
        once: re-estimate only before the first evaluation (later evaluations of a fit keep
            what training made of the statistics).
    """

    def __init__(self, once: bool = True) -> None:
        self.once = once
        self.done = False

    def _adapt(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done and self.once:
            return
        dm = trainer.datamodule
        data = getattr(dm, "target_data", None) or dm.eval_data
        loader = dm.eval_dataloader(data.train)
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        batches = (b[0].to(pl_module.device)
                   for b in tqdm(loader, desc="AdaBN: target statistics", disable=not show,
                                 leave=False))
        # the test-time path (e.g. a teacher's) is the one whose statistics matter
        reestimate_bn_statistics(pl_module, batches, forward=pl_module.test_features)
        if trainer.world_size > 1:
            for m in pl_module.modules():
                if isinstance(m, BATCH_NORMS) and m.track_running_stats:
                    for buf in (m.running_mean, m.running_var):
                        buf.copy_(trainer.strategy.reduce(buf, reduce_op="mean"))
        self.done = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._adapt(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._adapt(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state_dict: dict) -> None:
        self.done = bool(state_dict.get("done", False))
