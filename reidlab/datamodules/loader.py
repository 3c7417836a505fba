"""The DataLoader every reidlab loader is: workers that leave signals to the main process."""

from __future__ import annotations

import os
import signal
from functools import partial

import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset


def worker_init(worker_id: int, rank: int = 0) -> None:
    """Run in every DataLoader worker: ignore SIGINT and SIGTERM, which a terminal or a
    cluster scheduler sends to the whole process group, so that the main process decides
    (:class:`~reidlab.callbacks.InterruptCheckpoint` finishes the batch and saves) instead
    of dying workers ending the run with a traceback; the main process ends its workers,
    and a worker whose main process is gone exits by itself (PyTorch's watchdog). Then
    Lightning's per-worker seeding, as ``seed_everything(workers=True)`` asks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank=rank)


class TrainDataLoader(DataLoader):
    """A training loader that Lightning may resume inside an epoch.

    Its position is not kept here: the DataModule starts the batch sampler after the
    batches Lightning's own progress counts as trained
    (:meth:`~reidlab.datamodules.reid.ReIDDataModuleBase._continue_interrupted_epoch`),
    which unlike a count kept by the loader is not off by the batch Lightning prefetches.
    ``state_dict`` records the sampler's epoch for inspection; ``load_state_dict`` has
    nothing to restore."""

    def state_dict(self) -> dict:
        return {"epoch": getattr(self.batch_sampler, "epoch", None)}

    def load_state_dict(self, state: dict) -> None:
        pass


def data_loader(dataset: Dataset, *, num_workers: int, rank: int = 0,
                loader: type[DataLoader] = DataLoader, **kwargs) -> DataLoader:
    """``loader(dataset, num_workers=..., **kwargs)`` with :func:`worker_init` and pinned
    memory when CUDA is available; ``rank`` seeds the workers as Lightning does."""
    return loader(dataset, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=partial(worker_init, rank=rank) if num_workers else None,
                      **kwargs)
