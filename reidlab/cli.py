"""``reidlab`` console script: LightningCLI over every method and DataModule.

    reidlab fit --config examples/configs/quickstart.yaml
    reidlab test --config CONFIG --ckpt_path CKPT
    reidlab fit --config CONFIG --trainer.devices 4 --trainer.strategy ddp

Every constructor argument of a module or DataModule is a config key. Classes can be
named briefly (``class_path: Baseline``) because reidlab's modules and DataModules are
imported here. The DataModule's ``num_classes`` is linked to the model's.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

import reidlab.callbacks  # noqa: F401  (registers the callbacks for short class names)
import reidlab.datamodules  # noqa: F401  (registers the DataModules)
import reidlab.modules  # noqa: F401  (registers the method modules)
from reidlab.callbacks import FeatureWriter, InterruptCheckpoint
from reidlab.callbacks.figures import figure_folder
from reidlab.compare import METRICS_FILE
from reidlab.errors import InputValueError, ReIDLabError


class ReIDLabArgumentParser(LightningArgumentParser):
    """The CLI's parser: a config error is one message, with the closest valid names for a
    misspelt option, instead of the usage text and the parser's nested report."""

    def parse_path(self, cfg_path, *args, **kwargs):
        """A config file, refused when it writes a key twice (YAML keeps the last one)."""
        path = Path(str(cfg_path))
        if path.is_file():
            repeated = repeated_key(path.read_text())
            if repeated:
                key, first, second = repeated
                self.error(f"{path}: {key!r} is written twice (lines {first} and {second}); "
                           "YAML would silently keep the second: remove one")
        return super().parse_path(cfg_path, *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        keys = [a.dest for a in parser._actions if a.dest and a.dest != "help"]
        print(f"reidlab: error: {explain_config_error(message, keys)}", file=sys.stderr)
        prog = parser.prog.replace(" [options]", "")
        print(f"  ({prog} --help lists every option)", file=sys.stderr)
        self.exit(2)


def repeated_key(text: str) -> tuple[str, int, int] | None:
    """A key that a mapping of the YAML document ``text`` has twice (the first one found),
    as its dotted path and the two line numbers (1-based), or None (also for text that is
    not YAML: the parser reports that itself)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    todo = [(root, "")]
    while todo:
        node, prefix = todo.pop()
        if isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{prefix.removesuffix('.')}[{i}].")
                        for i, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[str, int] = {}
        for key_node, value in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in lines:
                return f"{prefix}{key}", lines[key], line
            lines[key] = line
            todo.append((value, f"{prefix}{key}."))
    return None


def explain_config_error(message: str, keys: list[str] = ()) -> str:
    """The gist of a jsonargparse error ``message``: for an option a class does not accept,
    which class, and the accepted names closest to it; for an unknown top-level key, the
    closest of ``keys`` (the parser's); for a bad value, the class, argument and reason;
    else the message itself."""
    top_level = re.search(r"does not accept option '([\w.]+)'", message)
    if top_level:
        option = top_level.group(1)
        close = difflib.get_close_matches(option, keys, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown option {option!r}{hint}"
    bad_values = re.findall(r"class_path '([\w.]+)':\s*Parser key \"(\w+)\":\s*([^\n]+)",
                            message)
    if bad_values:
        return "\n  ".join(f"{c}: {key}: {why.strip()}" for c, key, why in bad_values)
    # a nested option (``source_kwargs.num_train_ids``) is reported by its argument
    unknown = re.findall(r"class_path '([\w.]+)'[^']*?Option '(\w+)[\w.]*' is not accepted",
                         message, flags=re.S)
    if unknown:
        lines = []
        for class_path, option in unknown:
            accepted = sorted(accepted_arguments(class_path))
            if not accepted and len(unknown) > 1:  # a base class among the alternatives
                continue
            close = difflib.get_close_matches(option, accepted, n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                    else f"it accepts: {', '.join(accepted)}")
            lines.append(f"{class_path} has no argument {option!r}; {hint}")
        return "\n  ".join(lines)
    return message.strip()


def accepted_arguments(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` (a dotted name), those of its bases
    passed through ``**kwargs`` included."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names = set()
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(names)


class ReIDLabCLI(LightningCLI):
    """LightningCLI with the DataModule's ``num_classes`` linked to the model, and checks:

    * ``--ckpt_path`` must hold a checkpoint of the configured method (Lightning would
      otherwise rebuild whatever class the checkpoint names, e.g. train a Baseline from an
      ARN config); a file that is not a checkpoint is named in the error;
    * ``reidlab test`` without ``--ckpt_path`` refuses to score an untrained model unless
      ``--allow_untrained true`` (``validate`` and ``predict`` warn: they are also how a
      config's initial weights, e.g. ImageNet, are scored or exported);
    * ``reidlab predict`` writes the features (:meth:`before_predict`).

    Checkpoints and config of a run go to one stable folder per run name (the logger's
    ``name``, else the config file's stem), under the logger's ``save_dir`` (else the
    trainer's ``default_root_dir``): ``<dir>/<name>/checkpoints/`` with ``last.ckpt``
    written every epoch and ``<dir>/<name>/config.yaml``, the full config (trainer and
    callbacks included; also logged to the run's loggers). ``--ckpt_path last`` resumes
    from that ``last.ckpt`` and refuses when there is none. ModelCheckpoints configured
    with their own ``dirpath`` are left as they are. Ctrl-C and SIGTERM end a fit after
    the current batch with ``last.ckpt`` saved (:class:`~reidlab.callbacks.InterruptCheckpoint`),
    so ``--ckpt_path last`` continues inside the interrupted epoch.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes",
                              apply_on="instantiate")
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="test / validate without --ckpt_path (the initial weights)")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        self._integer_limits = self.integer_limits(config, args)
        ckpt_path = config.get("ckpt_path")
        path = (self.configured_run_dir(config) / "checkpoints" / "last.ckpt"
                if ckpt_path == "last" else ckpt_path)
        if path and Path(path).is_file():
            ckpt = check_checkpoint_class(path, (config.get("model") or {}).get("class_path"))
            data = config.get("data") or {}
            if str(data.get("class_path", "")).endswith("ImageFolderDataModule"):
                # a folder has no classes: the model keeps the checkpoint's
                num_classes = (ckpt.get("hyper_parameters") or {}).get("num_classes")
                data["init_args"]["num_classes"] = int(num_classes or 0)
            if subcommand == "fit":
                continue_wandb_run(config, ckpt.get(WANDB_RUN_ID))
        if subcommand in ("test", "validate", "predict") and not ckpt_path and not config.get(
                "allow_untrained"):
            message = (f"reidlab {subcommand} without --ckpt_path scores the model's initial "
                       "weights, not a trained run")
            if subcommand == "test":
                raise SystemExit(f"error: {message}; pass --ckpt_path CKPT, or "
                                 "--allow_untrained true to do it anyway")
            warnings.warn(message, stacklevel=2)


    def run_name(self, config=None) -> str:
        """The logger's ``name`` when the config gives one, else the config file's stem."""
        if config is None:
            config = self.config[self.subcommand] if self.subcommand else self.config
        logger = (config.get("trainer") or {}).get("logger")
        name = None
        if isinstance(logger, dict) or hasattr(logger, "get"):
            name = (logger.get("init_args") or {}).get("name")
        if not name and config.get("config"):
            name = Path(str(config["config"][-1])).stem
        return str(name or "reidlab")

    def configured_run_dir(self, config) -> Path:
        """:meth:`run_dir` from the parsed config, before the trainer exists."""
        trainer = config.get("trainer") or {}
        logger = trainer.get("logger")
        save_dir = (logger.get("init_args") or {}).get("save_dir") if hasattr(
            logger, "get") else None
        return Path(save_dir or trainer.get("default_root_dir") or os.getcwd()) / self.run_name(
            config)

    def run_dir(self, trainer: pl.Trainer) -> Path:
        """``<logger save_dir or default_root_dir>/<run name>``."""
        save_dir = getattr(trainer.logger, "save_dir", None) if trainer.logger else None
        return Path(save_dir or trainer.default_root_dir) / self.run_name()

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        trainer_config = self._get(self.config_init, "trainer")
        for name, value in getattr(self, "_integer_limits", {}).items():
            trainer_config[name] = value
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(self.run_dir(trainer) / "checkpoints")
                callback.save_last = True
        if trainer.loggers and not any(isinstance(c, LearningRateMonitor)
                                       for c in trainer.callbacks):
            trainer.callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if trainer.checkpoint_callbacks and not any(isinstance(c, InterruptCheckpoint)
                                                    for c in trainer.callbacks):
            trainer.callbacks.append(InterruptCheckpoint())
        return trainer

    def final_metrics(self) -> dict[str, float]:
        """The run's last ``val/`` and ``test/`` metrics."""
        return {k: float(v) for k, v in self.trainer.callback_metrics.items()
                if k.startswith(("val/", "test/")) and v.numel() == 1}

    def summary(self, figures: Path) -> str:
        """The end of a run in a few lines: final metrics in %, where things are
        (``figures``: :func:`~reidlab.callbacks.figures.figure_folder`)."""
        trainer = self.trainer
        metrics = self.final_metrics()
        lines = [f"reidlab {self.subcommand}: done"]
        if metrics:
            width = max(map(len, metrics))
            lines += [f"  {k:<{width}}  {100 * v:6.2f} %" for k, v in sorted(metrics.items())]
            lines.append(f"  metrics:    {self.run_dir(trainer) / METRICS_FILE}")
        for c in trainer.checkpoint_callbacks:
            if isinstance(c, ModelCheckpoint) and (c.last_model_path or c.best_model_path):
                lines.append(f"  checkpoint: {c.last_model_path or c.best_model_path}")
        run = self.run_dir(trainer)
        if (run / "config.yaml").is_file():
            lines.append(f"  config:     {run / 'config.yaml'}")
        if figures.is_dir():
            lines.append(f"  figures:    {figures}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                files = Path(logger.experiment.dir)
                images = files / "media" / "images"
                lines.append(f"  W&B run:    {files.parent} (wandb sync uploads it)")
                if images.is_dir():
                    lines.append(f"  figures:    {images}")
        return "\n".join(lines)

    def after_fit(self) -> None:
        """Write ``<run dir>/metrics.json`` (the final metrics, as fractions) and print
        :meth:`summary`."""
        figures = figure_folder(self.trainer)  # on every rank: under DDP it broadcasts
        if not self.trainer.is_global_zero:
            return
        metrics = self.final_metrics()
        if metrics:
            path = self.run_dir(self.trainer) / METRICS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"subcommand": self.subcommand} | metrics, indent=1))
        print(self.summary(figures))

    after_validate = after_test = after_fit

    def before_fit(self) -> None:
        if self.config_init[self.subcommand].get("ckpt_path") != "last":
            return
        folders = [c.dirpath for c in self.trainer.checkpoint_callbacks
                   if isinstance(c, ModelCheckpoint) and c.dirpath]
        if not any((Path(d) / "last.ckpt").is_file() for d in folders):
            raise SystemExit(f"error: --ckpt_path last: no last.ckpt in "
                             f"{', '.join(folders) or 'any checkpoint folder'}; nothing to "
                             "resume (drop --ckpt_path to start the run)")

    @staticmethod
    def integer_limits(config, args) -> dict[str, int]:
        """Lightning reads ``limit_train_batches: 1`` as one batch and ``1.0`` as every
        batch, but the parser turns an integer into a float: the integers written in the
        config files and on the command line (put back when the trainer is built)."""
        written = {}
        for path in config.get("config") or []:
            trainer = (yaml.safe_load(Path(str(path)).read_text()) or {}).get("trainer") or {}
            written |= {k: trainer[k] for k in INTEGER_OR_FRACTION if k in trainer}
        tokens = [str(t) for t in (sys.argv[1:] if args is None else args)]
        for i, token in enumerate(tokens):
            key, _, value = token.partition("=")
            name = key.removeprefix("--trainer.")
            if key.startswith("--trainer.") and name in INTEGER_OR_FRACTION:
                if not value and i + 1 < len(tokens):
                    value = tokens[i + 1]
                written[name] = yaml.safe_load(value) if value else None
        return {name: value for name, value in written.items()
                if isinstance(value, int) and not isinstance(value, bool)}

    def before_predict(self) -> None:
        """``reidlab predict`` writes the features (a :class:`FeatureWriter` to
        ``<default_root_dir>/features.pt`` unless a prediction writer is configured)."""
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            output = Path(self.trainer.default_root_dir) / "features.pt"
            self.trainer.callbacks.append(FeatureWriter(output))


class RunConfig(SaveConfigCallback):
    """The full config of a run, next to its checkpoints (``<run dir>/config.yaml``,
    see :class:`ReIDLabCLI`), and in the hyperparameters of its loggers (W&B run config).
    Checkpoints also record the W&B run's id, so a fit resumed from them continues that
    W&B run (:func:`continue_wandb_run`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **(kwargs | {"save_to_log_dir": False}))

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                    stage: str) -> None:
        folders = [Path(c.dirpath).parent for c in trainer.checkpoint_callbacks
                   if isinstance(c, ModelCheckpoint) and c.dirpath]
        folder = folders[0] if folders else Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, folder / self.config_filename, skip_none=False,
                         overwrite=True, multifile=self.multifile)
        dump = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": dump})

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[WANDB_RUN_ID] = logger.version


WANDB_RUN_ID = "wandb_run_id"  # the checkpoint key RunConfig writes


def continue_wandb_run(config, run_id: str | None) -> None:
    """Make a configured ``WandbLogger`` continue the W&B run ``run_id`` (a resumed fit; the
    logger resumes with ``resume="allow"``) unless the config names a run itself."""
    logger = (config.get("trainer") or {}).get("logger")
    if not (run_id and hasattr(logger, "get")):
        return
    if not str(logger.get("class_path", "")).endswith("WandbLogger"):
        return
    init_args = logger.get("init_args")
    if init_args is not None and not (init_args.get("id") or init_args.get("version")):
        init_args["id"] = run_id


def check_checkpoint_class(path: str | Path, configured: str | None) -> dict:
    """Refuse a Lightning checkpoint of another module class than ``configured``; returns
    the checkpoint (memory-mapped: tensors are read only when used).

    Raises:
        ValueError: the file is not a readable checkpoint, or it holds another class.
    """
    try:
        # memory-mapped: only the hyperparameters are read here (Lightning loads it again)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and EOF errors of a damaged or foreign file
        raise InputValueError(f"{path} is not a readable Lightning checkpoint: "
                         f"{type(err).__name__}: {err}") from err
    saved = (ckpt.get("hyper_parameters") or {}).get("_class_path")
    if not (saved and configured):
        return ckpt
    if saved.rsplit(".", 1)[-1] != configured.rsplit(".", 1)[-1]:  # short or full names
        raise InputValueError(
            f"{path} is a checkpoint of {saved}, but the config trains {configured}: "
            "--ckpt_path resumes or evaluates a run of the same method; to start a UDA "
            "method from a source Baseline, pass it as --model.init_args.pretrained")
    return ckpt


# Trainer arguments where an int counts batches and a float is a fraction
INTEGER_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                       "limit_predict_batches", "val_check_interval", "overfit_batches")

TRAINER_DEFAULTS = {
    # Identity samplers split batches across ranks themselves.
    "use_distributed_sampler": False,
}


def run_cli(args: list[str], run: bool = True) -> ReIDLabCLI:
    """The ``reidlab`` command in this process (benchmark scripts, notebooks): ``args`` as
    on the command line (``["fit", "--config", "run.yaml"]``; with ``run=False`` no
    subcommand), no config file written; returns the CLI, whose ``trainer``, ``model`` and
    ``datamodule`` stay usable. ``sys.argv`` is cut to the program name first: DDP's
    launcher re-runs ``sys.argv`` in its worker processes, which must not see the caller's
    own arguments."""
    sys.argv = sys.argv[:1]
    return ReIDLabCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                      subclass_mode_data=True, trainer_defaults=TRAINER_DEFAULTS,
                      save_config_callback=None, parser_class=ReIDLabArgumentParser,
                      args=args, run=run)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``reidlab`` console script."""
    os.environ.setdefault("WANDB_MODE", "offline")
    # Lightning's CLI still calls jsonargparse APIs deprecated upstream; not the user's concern.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    try:
        ReIDLabCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            parser_class=ReIDLabArgumentParser,
            args=args,
        )
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"reidlab: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error(err: BaseException) -> ReIDLabError | None:
    """The :class:`~reidlab.errors.ReIDLabError` that ``err`` is or was raised from (the
    config parser wraps errors of constructors in its own), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ReIDLabError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
