"""InterruptCheckpoint: Ctrl-C and SIGTERM end a fit cleanly, with a checkpoint to resume."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info


class TrainingInterrupted(SystemExit):
    """Raised to end a fit after :class:`InterruptCheckpoint` saved it; the exit status is
    the shell's ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM)."""


class InterruptCheckpoint(Checkpoint):
    """End an interrupted fit after the current training batch, with a resumable checkpoint.

    The first Ctrl-C (SIGINT) or SIGTERM (what cluster schedulers and SLURM pre-emption
    send) lets the training batch in flight finish, then every rank saves
    ``<dirpath>/<filename>.ckpt`` and the fit ends with :class:`TrainingInterrupted`
    (exit status 130 or 143, no traceback). A second Ctrl-C aborts at once
    (``KeyboardInterrupt``, nothing saved). Under DDP the ranks agree on the batch to stop
    after (one all-reduce of the signal number per batch), so a signal that reaches one
    rank only stops all of them, none waiting in a collective for another.

    From the start of training to its end this callback owns both signals: Lightning's
    own SIGTERM handler broadcasts from inside the handler, which under DDP mismatches the
    collective another rank is in (gloo aborts) when the signal reaches one rank first.
    Lightning restores every handler when the fit ends. DataLoader workers ignore both
    signals (:func:`reidlab.datamodules.loader.worker_init`): a process-group signal no
    longer kills them mid-batch.

    Resuming from the file (``Trainer.fit(..., ckpt_path=...)``, ``reidlab fit ...
    --ckpt_path last``) continues inside the interrupted epoch: reidlab's DataModules skip
    the batches already trained, so with deterministic augmentation the result equals the
    uninterrupted run's (tests/test_interrupt.py). Random augmentation and dropout draws
    are not replayed.

    A signal that arrives outside a training batch (validation, an epoch-end clustering)
    is acted on after the next training batch.

    Args:
        dirpath: folder of the checkpoint (default: the first ModelCheckpoint's
            ``dirpath``, else ``<default_root_dir>/checkpoints``).
        filename: file name without ``.ckpt``; the default ``last`` is the file
            ModelCheckpoint's ``save_last`` writes, which ``--ckpt_path last`` resumes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last") -> None:
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.filename = filename
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._pid = None

    # -- signals --------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its handlers (which it restores at the end of the fit)
        self.received = None
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

    def _restore_handlers(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._restore_handlers()

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        if self.received is not None:
            if signum == signal.SIGINT:  # the second Ctrl-C: abort now
                raise KeyboardInterrupt
            return
        self.received = signal.Signals(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else self.received.name
        print(f"\nreidlab: {name}: saving after the current training batch "
              "(Ctrl-C again aborts without saving)", flush=True)

    # -- saving ---------------------------------------------------------------------------
    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """``<dirpath>/<filename>.ckpt``."""
        folder = self.dirpath
        if folder is None:
            folders = [c.dirpath for c in trainer.checkpoint_callbacks
                       if isinstance(c, ModelCheckpoint) and c.dirpath]
            folder = Path(folders[0]) if folders else Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / f"{self.filename}.ckpt"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs, batch, batch_idx: int) -> None:
        # a SIGTERM before training started went to Lightning's handler
        received = self.received or (signal.SIGTERM if trainer.received_sigterm else None)
        if trainer.world_size > 1:  # stop on every rank after the same batch
            number = torch.tensor([0 if received is None else int(received)],
                                  device=pl_module.device)
            number = int(trainer.strategy.reduce(number, reduce_op="max").item())
            received = signal.Signals(number) if number else None
        if received is None:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"reidlab: {received.name}: saved {path} at epoch "
                       f"{trainer.current_epoch}, batch {batch_idx + 1}; resume with "
                       f"--ckpt_path {path} (or --ckpt_path last)")
        raise TrainingInterrupted(128 + int(received))
