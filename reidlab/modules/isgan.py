"""IS-GAN: identity shuffle GAN (Eom & Ham, "Learning Disentangled Representation for
Robust Person Re-identification", NeurIPS 2019).

An identity-related encoder E_R (MGN-style part features) and an identity-unrelated one E_U
(a Gaussian code per part) share a backbone trunk; a generator G rebuilds an image from
``phi_R (+) phi_U (+) noise (+) one-hot id``, and is asked to rebuild the anchor from the
*positive's* identity features (identity shuffling, eq. 3) and from part features swapped
between anchor and positive (part-level shuffling, eq. 4); a domain discriminator D_D and a
class discriminator D_C judge the generations (eq. 6, 7). At test time only E_R is kept.

Training runs in three stages (paper Sec. 4.1), by epoch (:meth:`ISGAN.stage_at`):

1. E_R alone with ``lambda_R L_R`` (eq. 1) and random erasing, lr 2e-4;
2. trunk and E_R frozen (their BatchNorms in eval mode), E_U, G, D trained with
   ``lambda_U L_U + lambda_S L_S + lambda_PS L_PS + lambda_D L_D + lambda_C L_C``, lr 2e-4;
3. everything end to end (L_R added back), lr 2e-5, lambda_U 0.01.

Each step of stages 2-3 is one D update on detached generations, then one update of E_R /
E_U / G against the updated D (manual optimization, two optimizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from reidlab.callbacks.generations import GenerationGrid
from reidlab.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidlab.errors import InputValueError
from reidlab.losses.isgan import (
    class_loss,
    domain_loss,
    kl_divergence_loss,
    part_classification_loss,
    part_shuffle,
    positive_indices,
    random_part_masks,
    shuffling_loss,
)
from reidlab.modules.base import (
    ReIDModule,
    check_manual_gan_trainer,
    load_checkpoint_parts,
    register_step_state,
    seeded_step,
)
from reidlab.nn import build_backbone
from reidlab.nn.isgan import Discriminator, Generator, IdentityEncoder, UnrelatedEncoder
from reidlab.nn.parts import PartBranches, split_backbone

STAGES = (1, 2, 3)


class ISGAN(ReIDModule):
    """IS-GAN on a supervised :class:`~reidlab.datamodules.ReIDDataModule` (P x K batches:
    the paper's 4 ids x 4 images; every image is an anchor, its positive a random other
    image of its id in the batch).

    Args:
        num_classes: training identities (linked from the datamodule by the CLI).
        pretrained: an ISGAN checkpoint whose trunk and E_R are loaded (e.g. the end of a
            stage-1 run, to train stages 2-3 with several settings from one stage 1, as the
            authors do); with it ``stage_epochs[0]`` may be 0.
        backbone: ``resnet50`` (paper) or a CPU backbone (``mobilenet_v2``, narrow ResNet).
            It is split after the first block of stage 3 (:func:`~reidlab.nn.parts.split_backbone`);
            E_R and E_U each get their own copies of the rest, both from ``weights``.
        weights: initial backbone weights (``imagenet``, a file, a cached name or None).
        backbone_width: channel multiplier of a random-init ResNet (CPU tests).
        stripes: horizontal stripes per branch (``(1, 2, 3)``: 8 part features).
        part_dim: width of each E_R part feature (256: a 2048-d phi_R).
        code_dim: width of each E_U part code (64: a 512-d phi_U).
        noise_dim: generator noise (128).
        image_size: ``(height, width)`` of the training images, sizing G and D (the
            DataModule's; 384 x 128 in the paper).
        generator_width, discriminator_width: channel multipliers of G and D (< 1 on CPU).
        stage_epochs: epochs of stages 1, 2 and 3 (paper: 300, 200, 100; ``(n, 0, 0)``
            trains E_R alone, the "baseline" row of Table 2). ``max_epochs`` may stop earlier.
        stage_lrs: learning rate of both optimizers in each stage (2e-4, 2e-4, 2e-5).
        lambda_r: weight of L_R (20).
        lambda_u: weight of L_U in stage 2 (0.001).
        lambda_u_stage3: weight of L_U in stage 3 (0.01).
        lambda_s: weight of L_S (10).
        lambda_ps: weight of L_PS (10; 0 drops the part-shuffled generations).
        lambda_d: weight of L_D (1).
        lambda_c: weight of L_C (2). With ``lambda_d = lambda_c = 0`` there is no D.
        noisy_labels: the authors' noisy BCE targets for L_D (real U(0.7, 1), fake U(0, 0.3)).
        shuffle_global: let the part shuffle swap the global features too (the authors'
            code intended it; the paper swaps local parts only).
        stage1_erasing_p: random erasing probability in stage 1 (applied here, per image;
            keep the DataModule's ``erasing_p`` at 0: the paper finds it hinders stages 2-3).
        weight_decay: Adam's (amsgrad, betas 0.9 / 0.999) weight decay for E_R, E_U, G (5e-4).
        d_momentum: SGD momentum for D (0.9).
        d_weight_decay: SGD weight decay for D (1e-4).
    """

    def __init__(
        self,
        num_classes: int = 0,
        pretrained: str | None = None,
        backbone: str = "resnet50",
        weights: str | None = "imagenet",
        backbone_width: float = 1.0,
        stripes: Sequence[int] = (1, 2, 3),
        part_dim: int = 256,
        code_dim: int = 64,
        noise_dim: int = 128,
        image_size: Sequence[int] = (384, 128),
        generator_width: float = 1.0,
        discriminator_width: float = 1.0,
        stage_epochs: Sequence[int] = (300, 200, 100),
        stage_lrs: Sequence[float] = (2e-4, 2e-4, 2e-5),
        lambda_r: float = 20.0,
        lambda_u: float = 0.001,
        lambda_u_stage3: float = 0.01,
        lambda_s: float = 10.0,
        lambda_ps: float = 10.0,
        lambda_d: float = 1.0,
        lambda_c: float = 2.0,
        noisy_labels: bool = True,
        shuffle_global: bool = False,
        stage1_erasing_p: float = 0.5,
        weight_decay: float = 5e-4,
        d_momentum: float = 0.9,
        d_weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise InputValueError("ISGAN needs num_classes >= 1 (the training identities)")
        if len(stage_epochs) != 3 or min(stage_epochs) < 0 or sum(stage_epochs) < 1:
            raise InputValueError("stage_epochs must be 3 epoch counts (stages 1, 2, 3), got "
                                  f"{list(stage_epochs)}")
        if len(stage_lrs) != 3:
            raise InputValueError(f"stage_lrs needs 3 learning rates, got {list(stage_lrs)}")
        if len(image_size) != 2:
            raise InputValueError(f"image_size must be (height, width), got {list(image_size)}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        net = build_backbone(backbone, weights, last_stride=2, width=backbone_width)
        self.trunk, tail = split_backbone(net)
        self.identity_encoder = IdentityEncoder(PartBranches(tail, stripes, "max"),
                                                num_classes, part_dim)
        self.unrelated_encoder = UnrelatedEncoder(PartBranches(tail, stripes, "avg"), code_dim)
        eligible = self.identity_encoder.branches.is_local
        self.shuffle_eligible = [True] * len(eligible) if shuffle_global else eligible
        if lambda_ps > 0 and sum(self.shuffle_eligible) < 2:
            raise InputValueError(f"stripes={list(stripes)} give {sum(self.shuffle_eligible)} "
                                  "local parts; the part shuffle needs 2 (or shuffle_global)")
        height, width = image_size
        self.generator = Generator(self.identity_encoder.feature_dim,
                                   self.unrelated_encoder.feature_dim, num_classes, height,
                                   width, noise_dim, generator_width)
        self.use_discriminator = lambda_d > 0 or lambda_c > 0
        self.discriminator = (Discriminator(num_classes, height, width, discriminator_width)
                              if self.use_discriminator else None)
        if pretrained is not None:
            load_checkpoint_parts(pretrained, {"trunk.": self.trunk,
                                               "identity_encoder.": self.identity_encoder},
                                  required="identity_encoder.", what="reidlab ISGAN")
        self.erasing = (v2.RandomErasing(p=stage1_erasing_p, value=0) if stage1_erasing_p > 0
                        else None)
        register_step_state(self)  # iteration counter and per-step seeds
        self.stage, self.stage_epoch = self.stage_at(0), None  # the epoch it was entered in

    # -- schedule ---------------------------------------------------------------------------
    def stage_at(self, epoch: int) -> int:
        """The stage (1, 2 or 3) of ``epoch``; epochs past the last stage are stage 3."""
        first, second, _ = self.hparams.stage_epochs
        return 1 if epoch < first else 2 if epoch < first + second else 3

    def enter_stage(self, stage: int, epoch: int | None = None) -> None:
        """Freeze / unfreeze the trunk and E_R, set the stage's learning rates (each training
        step puts frozen modules in eval mode: Lightning restores module modes itself, e.g.
        after validation and on resume)."""
        self.stage, self.stage_epoch = stage, epoch
        frozen = stage == 2
        for module in (self.trunk, self.identity_encoder):
            module.requires_grad_(not frozen)
        lr = self.hparams.stage_lrs[stage - 1]
        for optimizer in self._optimizer_list():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def configure_callbacks(self) -> list[pl.Callback]:
        """A :class:`~reidlab.callbacks.GenerationGrid` unless one is configured."""
        present = self.trainer.callbacks if self._trainer else []
        return [] if any(isinstance(c, GenerationGrid) for c in present) else [GenerationGrid()]

    def on_fit_start(self) -> None:
        trainer, hp = self.trainer, self.hparams
        check_manual_gan_trainer(trainer, "ISGAN", "each training step has a D-only and a "
                                 "generator-only backward, and stage 1 trains E_R alone")
        if hp.stage_epochs[0] == 0 and hp.pretrained is None and trainer.ckpt_path is None:
            raise InputValueError("stage_epochs[0] = 0 skips stage 1: give a stage-1 ISGAN "
                                  "checkpoint as pretrained (E_R would start untrained)")
        if trainer.max_epochs is not None and trainer.max_epochs > sum(hp.stage_epochs):
            raise InputValueError(f"max_epochs={trainer.max_epochs} runs past the three stages "
                                  f"(stage_epochs={list(hp.stage_epochs)}, "
                                  f"{sum(hp.stage_epochs)} epochs)")
        erasing = getattr(trainer.datamodule, "hparams", {}).get("erasing_p", 0)
        if erasing:
            pl.utilities.rank_zero_warn(
                f"the DataModule erases images in every stage (erasing_p={erasing}); IS-GAN "
                "erases in stage 1 only (its stage1_erasing_p): set data erasing_p to 0")

    def on_train_epoch_start(self) -> None:
        self.enter_stage(self.stage_at(self.current_epoch), self.current_epoch)
        self.log("train/stage", float(self.stage), on_step=False, on_epoch=True)

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["isgan"] = {"stage": self.stage, "epoch": self.stage_epoch,
                               "iteration": int(self.iteration)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("isgan")
        if saved is None:
            return
        epoch = saved["epoch"]  # the epoch being trained in that stage (None: before fit)
        if epoch is not None and self.stage_at(epoch) != saved["stage"]:
            raise InputValueError(
                f"the checkpoint was saved in stage {saved['stage']} at epoch {epoch}, but "
                f"stage_epochs={list(self.hparams.stage_epochs)} puts epoch {epoch} in stage "
                f"{self.stage_at(epoch)}: resume with the stage_epochs it was trained with")
        self.stage = saved["stage"]

    # -- networks -------------------------------------------------------------------------
    def identity_features(self, images: torch.Tensor) -> dict:
        """E_R's output (``parts``, ``feature``, ``logits``) for ``images``."""
        return self.identity_encoder(self.trunk(images))

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        """phi_R of the image plus phi_R of its mirror, L2-normalised (paper Sec. 4.1)."""
        feature = (self.identity_features(images)["feature"]
                   + self.identity_features(images.flip(-1))["feature"])
        return F.normalize(feature, dim=1)

    def generate(self, identity_parts: torch.Tensor, unrelated: torch.Tensor,
                 labels: torch.Tensor, positives: torch.Tensor,
                 part_masks: torch.Tensor | None, noise: torch.Tensor | None = None) -> dict:
        """The generations of eq. 3-4 for every anchor, in one generator pass:
        ``reconstruction`` G(phi_R(I), phi_U(I)), ``shuffled`` G(phi_R(I_pos), phi_U(I))
        and, with ``part_masks``, ``part_shuffled`` G(S(phi_R(I), phi_R(I_pos)), phi_U(I))."""
        n = len(labels)
        codes = [identity_parts, identity_parts[positives]]
        if part_masks is not None:
            codes.append(part_shuffle(identity_parts, identity_parts[positives], part_masks))
        k = len(codes)
        images = self.generator(torch.cat(codes).flatten(1), unrelated.repeat(k, 1),
                                labels.repeat(k), None if noise is None else noise.repeat(k, 1))
        names = ("reconstruction", "shuffled", "part_shuffled")[:k]
        return dict(zip(names, images.split(n), strict=True))

    # -- training ---------------------------------------------------------------------------
    def _optimizer_list(self) -> list:
        if self._trainer is None or not self.trainer.optimizers:
            return []
        return self.trainer.optimizers

    def _erase(self, images: torch.Tensor) -> torch.Tensor:
        if self.erasing is None:
            return images
        return torch.stack([self.erasing(image) for image in images])

    def training_step(self, batch, batch_idx: int) -> None:
        images, pids = batch[0], batch[1]
        hp = self.hparams
        if tuple(images.shape[-2:]) != tuple(hp.image_size):
            raise InputValueError(f"training images are {tuple(images.shape[-2:])} but ISGAN "
                                  f"was built for image_size={list(hp.image_size)}: set it to "
                                  "the DataModule's (height, width)")
        for module in (self.trunk, self.identity_encoder):  # stage 2: BN statistics frozen
            module.train(self.stage != 2)
        optimizers = self.optimizers()
        opt_g, opt_d = (optimizers, None) if not isinstance(optimizers, list) else optimizers
        # positives, part masks, noise, codes, dropout, erasing and noisy labels
        with seeded_step(self, images.device):
            logs = (self.stage_one_step(images, pids, opt_g) if self.stage == 1
                    else self.adversarial_step(images, pids, opt_g, opt_d))
        self.iteration += 1
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True,
                      batch_size=len(pids))

    def stage_one_step(self, images, pids, opt_g) -> dict[str, torch.Tensor]:
        """Stage 1: E_R with lambda_R L_R on randomly erased images."""
        out = self.identity_features(self._erase(images))
        loss = self.hparams.lambda_r * part_classification_loss(out["logits"], pids)
        opt_g.zero_grad()
        self.manual_backward(loss)
        opt_g.step()
        acc = (torch.stack(out["logits"]).mean(0).argmax(1) == pids).float().mean()
        return {"identity": loss.detach() / self.hparams.lambda_r, "g_loss": loss.detach(),
                "acc": acc}

    def adversarial_step(self, images, pids, opt_g, opt_d) -> dict[str, torch.Tensor]:
        """Stages 2-3: one D update on detached generations, then one E_R / E_U / G update
        against the updated D (eq. 8)."""
        hp = self.hparams
        end_to_end = self.stage == 3
        with torch.set_grad_enabled(end_to_end):
            trunk_map = self.trunk(images)
            identity = self.identity_encoder(trunk_map)
        unrelated = self.unrelated_encoder(trunk_map)
        positives = positive_indices(pids)
        masks = (random_part_masks(len(pids), self.shuffle_eligible) if hp.lambda_ps > 0
                 else None)
        fakes = self.generate(identity["parts"], unrelated["code"], pids, positives, masks)
        target = torch.tanh(images)
        logs: dict[str, torch.Tensor] = {}

        if self.use_discriminator:  # D step: eq. 6 and 7 for D_D / D_C, fakes detached
            with self.toggled_optimizer(opt_d):
                generated = torch.cat(list(fakes.values())).detach()
                domain_logits, class_logits = self.discriminator(torch.cat([target, generated]))
                n = len(pids)
                d_domain = (domain_loss(domain_logits[:n], True, hp.noisy_labels)
                            + domain_loss(domain_logits[n:], False, hp.noisy_labels))
                d_class = class_loss(self._class_groups(class_logits, n, real=True), pids)
                d_loss = hp.lambda_d * d_domain + hp.lambda_c * d_class
                opt_d.zero_grad()
                self.manual_backward(d_loss)
                opt_d.step()
            logs |= {"d_loss": d_loss.detach(), "d_domain": d_domain.detach(),
                     "d_class": d_class.detach()}

        with self.toggled_optimizer(opt_g):  # G step: E_R / E_U / G against the updated D
            lambda_u = hp.lambda_u_stage3 if end_to_end else hp.lambda_u
            losses = {"kl": kl_divergence_loss(unrelated["mu"], unrelated["logvar"]),
                      "shuffle": shuffling_loss(target, [fakes["reconstruction"],
                                                         fakes["shuffled"]])}
            weights = {"kl": lambda_u, "shuffle": hp.lambda_s}
            if "part_shuffled" in fakes:
                losses["part_shuffle"] = shuffling_loss(target, [fakes["part_shuffled"]])
                weights["part_shuffle"] = hp.lambda_ps
            if end_to_end:
                losses["identity"] = part_classification_loss(identity["logits"], pids)
                weights["identity"] = hp.lambda_r
            if self.use_discriminator:
                domain_logits, class_logits = self.discriminator(
                    torch.cat(list(fakes.values())))
                losses["g_domain"] = domain_loss(domain_logits, True, hp.noisy_labels)
                losses["g_class"] = class_loss(
                    self._class_groups(class_logits, len(pids), real=False), pids)
                weights |= {"g_domain": hp.lambda_d, "g_class": hp.lambda_c}
            g_loss = sum(weights[k] * v for k, v in losses.items())
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        return logs | {k: v.detach() for k, v in losses.items()} | {"g_loss": g_loss.detach()}

    @staticmethod
    def _class_groups(logits: torch.Tensor, n: int, real: bool) -> list[torch.Tensor]:
        """The groups of eq. 7 in D's output: [real,] identity- and part-shuffled
        generations (reconstructions are judged by D_D only)."""
        groups = list(logits.split(n))
        real_part, fakes = (groups[:1], groups[1:]) if real else ([], groups)
        return real_part + fakes[1:]  # fakes[0] are the reconstructions

    def configure_optimizers(self):
        hp = self.hparams
        lr = hp.stage_lrs[0]
        generator_side = [p for m in (self.trunk, self.identity_encoder, self.unrelated_encoder,
                                      self.generator) for p in m.parameters()]
        optimizers = [torch.optim.Adam(generator_side, lr=lr, betas=(0.9, 0.999),
                                       weight_decay=hp.weight_decay, amsgrad=True)]
        if self.discriminator is not None:
            optimizers.append(torch.optim.SGD(self.discriminator.parameters(), lr=lr,
                                              momentum=hp.d_momentum,
                                              weight_decay=hp.d_weight_decay))
        return optimizers

    # -- pictures -------------------------------------------------------------------------
    @torch.no_grad()
    def generation_examples(self, anchors: torch.Tensor, positives: torch.Tensor,
                            labels: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """The paper's qualitative figure for fixed pairs, as displayable images in [0, 1]:
        ``anchor``, ``positive``, the anchor's ``reconstruction``, ``identity shuffled``
        (the positive's phi_R, the anchor's phi_U), ``part shuffled`` and ``pose swapped``
        (the anchor's phi_R with the positive's phi_U). Eval mode, zero noise, a fixed
        part mask."""
        was_training = self.training
        self.eval()
        try:
            trunk_map = self.trunk(torch.cat([anchors, positives]))
            identity = self.identity_encoder(trunk_map)["parts"]
            unrelated = self.unrelated_encoder(trunk_map)["code"]
            n = len(anchors)
            device = trunk_map.device
            pairs = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(device)
            masks = random_part_masks(2 * n, self.shuffle_eligible,
                                      torch.Generator().manual_seed(seed))
            noise = torch.zeros(2 * n, self.hparams.noise_dim, device=device)
            both = torch.cat([labels, labels])
            fakes = self.generate(identity, unrelated, both, pairs, masks, noise)
            swapped = self.generator(identity[:n].flatten(1), unrelated[n:], labels, noise[:n])
        finally:
            self.train(was_training)
        return {"anchor": denormalize(anchors), "positive": denormalize(positives),
                "reconstruction": from_generator(fakes["reconstruction"][:n]),
                "identity shuffled": from_generator(fakes["shuffled"][:n]),
                "part shuffled": from_generator(fakes["part_shuffled"][:n]),
                "pose swapped": from_generator(swapped)}


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images back to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return (images.float() * std + mean).clamp(0, 1)


def from_generator(images: torch.Tensor) -> torch.Tensor:
    """Generator outputs (tanh of a normalised image) back to [0, 1]."""
    return denormalize(torch.atanh(images.float().clamp(-0.999, 0.999)))
