"""``reidlab`` console script: LightningCLI over every method and DataModule.

    reidlab fit --config examples/configs/quickstart.yaml
    reidlab test --config CONFIG --ckpt_path CKPT
    reidlab fit --config CONFIG --trainer.devices 4 --trainer.strategy ddp

Every constructor argument of a module or DataModule is a config key. Classes can be
named briefly (``class_path: Baseline``) because reidlab's modules and DataModules are
imported here. The DataModule's ``num_classes`` is linked to the model's.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

import reidlab.callbacks  # noqa: F401  (registers the callbacks for short class names)
import reidlab.datamodules  # noqa: F401  (registers the DataModules)
import reidlab.modules  # noqa: F401  (registers the method modules)


class ReIDLabCLI(LightningCLI):
    """LightningCLI with the DataModule's ``num_classes`` linked to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes",
                              apply_on="instantiate")


TRAINER_DEFAULTS = {
    # Identity samplers split batches across ranks themselves.
    "use_distributed_sampler": False,
}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``reidlab`` console script."""
    os.environ.setdefault("WANDB_MODE", "offline")
    # Lightning's CLI still calls jsonargparse APIs deprecated upstream; not the user's concern.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    ReIDLabCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
