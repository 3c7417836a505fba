"""Figures people would rather look at than read, and logging them to any logger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The backend is left to matplotlib (headless Agg without a display, inline in notebooks):
# figures are rendered to arrays and files, and closed once logged.
import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
from PIL import Image

from reidlab.datasets.image_dataset import read_image

THUMB = (64, 128)  # width, height of thumbnails


def _show(ax, path: str, colour: str, title: str) -> None:
    ax.imshow(np.asarray(read_image(path).resize(THUMB, Image.BILINEAR)))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=7)


def ranked_list_figure(
    query_paths: Sequence[str],
    query_pids: Sequence[int],
    ranked_paths: Sequence[Sequence[str]],
    ranked_correct: Sequence[Sequence[bool]],
) -> plt.Figure:
    """One row per query: the query (blue) then its top gallery matches, with green
    borders for correct and red for wrong ones."""
    rows, cols = len(query_paths), 1 + max(len(r) for r in ranked_paths)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.7), squeeze=False)
    for r in range(rows):
        _show(axes[r, 0], query_paths[r], "tab:blue", f"query {query_pids[r]}")
        for c in range(1, cols):
            ax = axes[r, c]
            if c - 1 < len(ranked_paths[r]):
                ok = ranked_correct[r][c - 1]
                _show(ax, ranked_paths[r][c - 1], "tab:green" if ok else "tab:red", f"#{c}")
            else:
                ax.axis("off")
    fig.tight_layout()
    return fig


def figure_to_array(fig: plt.Figure) -> np.ndarray:
    """RGB uint8 array of a rendered figure."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def figure_folder(trainer: pl.Trainer) -> Path:
    """Where PNG figures go: ``<log dir>/figures``. Call it on every rank (it broadcasts)."""
    return Path(trainer.log_dir or trainer.default_root_dir) / "figures"


def log_figure(trainer: pl.Trainer, key: str, fig: plt.Figure, folder: Path) -> list[Path]:
    """Log ``fig`` to every logger of ``trainer``: W&B as an image, TensorBoard as a
    figure; with any other logger, or none, save a PNG in ``folder`` (see
    :func:`figure_folder`). Call it on rank 0 only.

    Returns:
        The PNG files written (empty when every logger took the figure itself).
    """
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    written, step = [], trainer.global_step
    needs_file = not trainer.loggers
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[figure_to_array(fig)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, fig, global_step=step, close=False)
        else:
            needs_file = True
    if needs_file:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    plt.close(fig)
    return written
