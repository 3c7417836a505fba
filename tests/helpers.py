"""Helpers shared by test files: subprocess scripts (DDP runs) and tiny synthetic CLI runs."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "scripts"
TINY = "{num_train_ids: 8, num_test_ids: 6, images_per_id: 6, height: 64, width: 32}"


def run_script(name: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``tests/scripts/<name>`` in a subprocess (Lightning's DDP re-executes scripts);
    returns it, with its captured output."""
    env = dict(os.environ, REIDLAB_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT))  # scripts import tests.helpers
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def synthetic_cli_args(config: str, tmp_path: Path, *extra: str) -> list[str]:
    """``reidlab fit`` arguments running ``examples/configs/synthetic/<config>`` at toy size
    (2 epochs of 2 batches, 32x16 images, a quarter-width random-init ResNet-18 instead of
    the configs' ImageNet MobileNetV2, CSV logs in tmp_path)."""
    return [
        "--config", str(ROOT / "examples" / "configs" / "synthetic" / config),
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.check_val_every_n_epoch", "2", "--trainer.accelerator", "cpu",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--data.init_args.source_kwargs", TINY, "--data.init_args.target_kwargs", TINY,
        "--data.init_args.height", "32", "--data.init_args.width", "16",
        "--data.init_args.num_workers", "0", "--data.init_args.num_ids", "2",
        "--data.init_args.num_instances", "4", "--model.init_args.backbone", "resnet18",
        "--model.init_args.backbone_width", "0.25", "--model.init_args.weights", "null",
        *extra,
    ]


def assert_same_weights(value: torch.Tensor, ref: torch.Tensor) -> None:
    """``value`` equals ``ref``, or holds one copy of it per domain (the buffers of a
    DomainBatchNorm converted from a plain BN)."""
    if value.shape != ref.shape and value.shape[1:] == ref.shape:
        ref = ref.expand_as(value)
    torch.testing.assert_close(value, ref)



class SendSignal(pl.Callback):
    """Send ``signal`` at the start of the training batch after ``step`` optimizer steps,
    on rank ``rank`` only: to this process, or to its whole process group (``group``: what
    a terminal's Ctrl-C or a cluster scheduler does, DataLoader workers included)."""

    def __init__(self, signal: str = "SIGINT", step: int = 1, rank: int = 0,
                 group: bool = False) -> None:
        self.signal, self.step, self.rank, self.group = signal, step, rank, group

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            number = getattr(signal, self.signal)
            if self.group:
                os.killpg(os.getpgid(0), number)
            else:
                os.kill(os.getpid(), number)


def assert_same_state(module: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Every parameter and buffer of ``module`` equals ``ref``'s (a resumed run against the
    uninterrupted one)."""
    a, b = module.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
