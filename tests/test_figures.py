import numpy as np
import pytest
from PIL import Image
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from reidlab.callbacks import figure_folder, log_figure, ranked_list_figure
from reidlab.callbacks.figures import figure_to_array


@pytest.fixture
def figure(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (16, 32), colour).save(path)
        paths.append(str(path))
    return ranked_list_figure([paths[0], paths[1]], [1, 2], [[paths[1], paths[2]], [paths[0]]],
                              [[True, False], [False]])


def test_ranked_list_borders(figure):
    axes = figure.axes
    assert len(axes) == 2 * 3
    colours = [ax.spines["top"].get_edgecolor() for ax in axes[:3]]
    # query blue, then a correct (green) and a wrong (red) match
    assert colours[0][2] > 0.5 and colours[1][1] > 0.4 and colours[2][0] > 0.7
    assert not axes[5].axison  # the second row has one match only: empty slot hidden
    assert figure_to_array(figure).ndim == 3


def test_png_without_logger_and_with_csv(tmp_path, figure):
    for logger in (False, CSVLogger(tmp_path / "csv")):
        trainer = Trainer(logger=logger, default_root_dir=tmp_path)
        written = log_figure(trainer, "val/ranked_list", figure, figure_folder(trainer))
        assert len(written) == 1 and written[0].exists()
        assert written[0].parent == figure_folder(trainer)


def test_wandb_offline_and_tensorboard_take_the_figure(tmp_path, figure, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="reidlab-test")
    tb_logger = TensorBoardLogger(tmp_path / "tb")
    trainer = Trainer(logger=[wandb_logger, tb_logger], default_root_dir=tmp_path)
    assert log_figure(trainer, "val/ranked_list", figure, tmp_path / "figures") == []
    wandb_logger.experiment.finish()
    media = list((tmp_path / "wandb").rglob("media/images/val/ranked_list_*.png"))
    assert media, "W&B stored the image in its offline run folder"
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert np.asarray(Image.open(media[0])).shape[-1] in (3, 4)
