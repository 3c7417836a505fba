"""What every reidlab method module has in common: the test-time feature contract."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from reidlab.errors import InputFileError, InputValueError, MissingFileError

# Constructor arguments naming where the initial weights come from. A checkpoint holds the
# trained weights, so they are cleared in its saved hyperparameters: ``load_from_checkpoint``
# then neither needs the original files nor downloads ImageNet weights.
INIT_WEIGHT_ARGS = ("pretrained", "weights")


class ReIDModule(pl.LightningModule):
    """Base of the method modules.

    Subclasses implement :meth:`test_features` (the method's test-time feature, e.g. the
    BNNeck feature or the teacher's pooled feature). :meth:`extract_features` wraps it in
    eval mode without gradients, so it is safe to call from a notebook at any time.
    Validation, test and predict steps return ``{"features", "pids", "camids",
    "indices"}`` for the evaluation callback.
    """

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None and any(k in hparams for k in INIT_WEIGHT_ARGS):
            checkpoint["hyper_parameters"] = dict(hparams) | {
                k: None for k in INIT_WEIGHT_ARGS if k in hparams}

    @torch.no_grad()
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time features ``(N, D)`` of ``images``, in eval mode, without gradients."""
        was_training = self.training
        self.eval()
        try:
            return self.test_features(images)
        finally:
            self.train(was_training)

    #: average each evaluation image's features with its mirror's (set by
    #: ``RetrievalEvaluation(flip=True)``; not a hyperparameter of the method)
    flip_test_features: bool = False

    def _eval_step(self, batch) -> dict[str, torch.Tensor]:
        images, pids, camids, indices = batch[:4]
        features = self.extract_features(images)
        if self.flip_test_features:
            features = (features + self.extract_features(images.flip(-1))) / 2
        return {"features": features, "pids": pids, "camids": camids, "indices": indices}

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch)


def load_baseline_parts(path: str, parts: dict[str, nn.Module],
                        optional: tuple[str, ...] = ()) -> None:
    """Load the weights of a source-trained :class:`~reidlab.modules.Baseline` into modules
    (:func:`load_checkpoint_parts` expecting ``backbone.*`` weights)."""
    load_checkpoint_parts(path, parts, optional, required="backbone.",
                          what="reidlab Baseline trained on the source")


def load_checkpoint_parts(path: str, parts: dict[str, nn.Module], optional: tuple[str, ...] = (),
                          required: str = "backbone.", what: str = "reidlab model") -> None:
    """Load weights of a checkpoint into modules, by key prefix.

    Args:
        path: a Lightning checkpoint, or a plain state dict.
        parts: checkpoint key prefix (``"backbone."``, ``"neck."``, ...) -> module to fill.
        optional: prefixes whose keys may be missing (e.g. a parameter-free pooling).
        required: a prefix the checkpoint must have keys under.
        what: the expected kind of checkpoint, for the error messages.

    Raises:
        OSError: the file cannot be read. ValueError: it holds no ``required`` weights, or
        a part does not fit (different backbone, width or number of classes).
    """
    if not Path(path).is_file():
        raise MissingFileError(f"the pretrained checkpoint {path} does not exist (expected a "
                               f"{what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle / zip / EOF errors of a damaged or foreign file
        raise InputFileError(f"cannot read the pretrained checkpoint {path}: "
                             f"{type(err).__name__}: {err}") from err
    state = state.get("state_dict", state)
    if not any(k.startswith(required) for k in state):
        raise InputValueError(f"{path} has no '{required}*' weights: expected a checkpoint of "
                              f"a {what}")
    for prefix, module in parts.items():
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=prefix not in optional)
        except RuntimeError as err:
            raise InputValueError(f"{path}: the '{prefix}*' weights do not fit this model "
                                  f"(backbone, backbone_width, num_classes?): {err}") from err


# -- manual optimization (the GAN methods) -------------------------------------------------
def register_step_state(module: nn.Module) -> None:
    """Give a manually optimized module an ``iteration`` counter (Lightning's
    ``global_step`` counts optimizer steps) and a ``step_seed``, both buffers, so that a
    resumed run continues the count and repeats the random draws of the uninterrupted one
    (:func:`seeded_step`)."""
    module.register_buffer("iteration", torch.zeros((), dtype=torch.long))
    module.register_buffer("step_seed", torch.tensor(torch.initial_seed() % 2**62))


@contextmanager
def seeded_step(module: pl.LightningModule, device: torch.device) -> Iterator[None]:
    """Run a training step's random draws (dropout, pairings, masks, coins) from a generator
    seeded by (``step_seed``, rank, ``iteration``), not from the global stream that data
    loading shares: a run resumed inside an epoch draws what it would have."""
    seed = int(module.step_seed) + 1_000_003 * module.global_rank + int(module.iteration)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def check_manual_gan_trainer(trainer: pl.Trainer, method: str, why_unused: str) -> None:
    """Refuse what a step with several optimizers and backward passes cannot serve:
    ``16-mixed`` (one loss scaler cannot serve several optimizers correctly) and DDP without
    ``find_unused_parameters`` (each backward reaches only some parameters: ``why_unused``)."""
    scaler = getattr(trainer.strategy.precision_plugin, "scaler", None)
    if str(trainer.precision).startswith("16") or scaler is not None:
        raise InputValueError(
            f"{method} does not support precision='16-mixed': one loss scaler cannot serve its "
            "several optimizers correctly; use 'bf16-mixed' or 32")
    strategy = trainer.strategy
    if (isinstance(strategy, DDPStrategy) and trainer.world_size > 1
            and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters")):
        raise InputValueError(f"{method} under DDP needs strategy="
                              f"'ddp_find_unused_parameters_true': {why_unused}")
