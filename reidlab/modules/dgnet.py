"""DG-Net: joint discriminative and generative learning (Zheng et al., "Joint
Discriminative and Generative Learning for Person Re-identification", CVPR 2019), the
supervised stage DG-Net++ starts from; settings from METHODS.md (DG-Net++ section).

An appearance encoder E_a (a re-ID backbone with a primary and a fine-grained identity
head) and a generator (structure encoder E_s + AdaIN decoder G) swap appearance and
structure between two images: ``x_ba = G(s_b, a_a)`` wears a's appearance in b's structure,
``x_ab = G(s_a, a_b)`` the reverse. Losses of one step (weights of METHODS.md):

- image losses, training E_s and G only (the appearance code is detached):
  LSGAN on the multi-scale image discriminator D (1); self-reconstruction (5);
  reconstruction from the positive's appearance (5); structure-code and appearance-code
  reconstruction (1 each) and cycle reconstruction ``G(E_s(x_ab), E_a'(x_ba)) = x_a`` (2);
  identity of the generated images under the appearance provider's label (0.5). E_a' is a
  frozen per-step copy of E_a (in eval mode): its outputs pass gradients to G only. With
  probability 0.5 a step trains E_s on the detached generation in the structure-code loss,
  otherwise E_s's frozen copy passes the gradient to G.
- identity losses, training E_a only: cross-entropy of the primary head (1) + fine-grained
  head (0.2) on the real images and on their positives (1); the teacher loss (2): the KL
  divergence of the primary head's distribution on the detached generations to the
  flip-averaged distribution of a source-trained :class:`~reidlab.modules.Baseline`, plus
  0.2 x the fine-grained head's cross-entropy on them under the *structure* provider's label
  (fine-grained feature mining).

The teacher, cycle and code-reconstruction weights ramp up linearly from 0 after
``ramp_start`` iterations. Each step is one D update (LSGAN + R1 on the real images) on the
detached generations, then one update of E_s / G (Adam) and E_a (SGD, 10x on the heads)
against the updated D (manual optimization).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from reidlab.callbacks.generations import GenerationGrid
from reidlab.errors import InputFileError, InputValueError, MissingFileError
from reidlab.losses.dgnet import (
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    r1_penalty,
    teacher_kl_loss,
)
from reidlab.modules.base import (
    ReIDModule,
    check_manual_gan_trainer,
    register_step_state,
    seeded_step,
)
from reidlab.modules.baseline import Baseline
from reidlab.modules.isgan import denormalize
from reidlab.nn import build_backbone
from reidlab.nn.dgnet import AppearanceEncoder, Generator, ImageDiscriminator


@dataclass
class PairPass:
    """The forward pass of one step (:meth:`DGNet.forward_pairs`): per side (a, b) its slice
    of the batch, domain, generator, whether its labels are used, labels, images, appearance
    code, positive's code, structure code and self-reconstruction; the swaps ``cross`` =
    (x_ba, x_ab), also concatenated as ``fakes``; E_a's output on images + positives."""

    images: torch.Tensor
    domains: torch.Tensor
    sides: tuple[slice, slice]
    dom: list[int]
    gens: list[Generator]
    known: list[bool]
    labels: list[torch.Tensor]
    x: list[torch.Tensor]
    out: dict
    a: list[torch.Tensor]
    a_pos: list[torch.Tensor]
    s_code: list[torch.Tensor]
    recon: list[torch.Tensor]
    cross: list[torch.Tensor]
    fakes: torch.Tensor


class DGNet(ReIDModule):
    """DG-Net on a supervised :class:`~reidlab.datamodules.ReIDDataModule` with
    ``sampler="pairs"`` (or source-source ``domain_pairs`` batches of a
    :class:`~reidlab.datamodules.CrossDomainDataModule`, to evaluate the direct transfer):
    every step ``pair_batch_size`` images x_a and as many x_b, each with a positive.

    Args:
        num_classes: training identities (linked from the datamodule by the CLI).
        teacher: a :class:`~reidlab.modules.Baseline` checkpoint trained on the same data
            (the teacher of the primary head on generated images); loaded at fit start and
            kept out of this module's checkpoint. Required unless ``w_teacher = 0``.
        backbone: E_a's backbone (``resnet50``, last stride 1, in the paper; ``mobilenet_v2``
            on CPU).
        weights: its initial weights (``imagenet``, a file, a cached name or None).
        backbone_width: channel multiplier of a random-init ResNet (CPU tests).
        appearance_parts: horizontal stripes max-pooled into the appearance code (4).
        structure_channels: E_s's conv widths (16, 32, 32, 64).
        code_channels: structure-code channels and decoder width (128).
        residual_blocks: residual blocks of E_s and AdaIN blocks of the decoder (4).
        mlp_hidden: width of the AdaIN MLPs (512).
        decoder_channels: the decoder's up-sampling widths (64, 32).
        discriminator_scales, discriminator_width, discriminator_blocks: D's size (3, 32, 4).
        lr_generator, lr_discriminator: Adam learning rates of E_s / G and D (1e-4).
        lr_backbone, lr_heads: SGD learning rates of E_a's backbone and heads (2e-3, 2e-2).
        lr_milestones: iterations at which every learning rate is multiplied by ``lr_gamma``.
        lr_gamma: that factor (0.1).
        weight_decay: of Adam (E_s / G, D) and SGD (E_a) (5e-4).
        betas: Adam's betas ((0, 0.999)).
        momentum: SGD's (Nesterov) momentum (0.9).
        w_gan, w_recon, w_recon_positive, w_structure, w_appearance, w_cycle: image-loss
            weights (1, 5, 5, 1, 1, 2).
        w_id, w_id_fine, w_positive_id, w_recon_id: identity-loss weights (1, 0.2, 1, 0.5).
        w_teacher, w_teacher_fine: teacher KL weight and the fine-grained mining factor
            inside it (2, 0.2).
        r1_weight: R1 penalty on real images (0.01).
        ramp_start: iteration after which the structure, appearance, cycle and teacher
            weights grow from 0 (30k).
        ramp_iterations: iterations from 0 to their full value (linear; METHODS.md gives no
            rate: 4k here).
    """

    def __init__(
        self,
        num_classes: int = 0,
        teacher: str | None = None,
        backbone: str = "resnet50",
        weights: str | None = "imagenet",
        backbone_width: float = 1.0,
        appearance_parts: int = 4,
        structure_channels: Sequence[int] = (16, 32, 32, 64),
        code_channels: int = 128,
        residual_blocks: int = 4,
        mlp_hidden: int = 512,
        decoder_channels: Sequence[int] = (64, 32),
        discriminator_scales: int = 3,
        discriminator_width: int = 32,
        discriminator_blocks: int = 4,
        lr_generator: float = 1e-4,
        lr_discriminator: float = 1e-4,
        lr_backbone: float = 2e-3,
        lr_heads: float = 2e-2,
        lr_milestones: Sequence[int] = (60_000, 90_000, 105_000),
        lr_gamma: float = 0.1,
        weight_decay: float = 5e-4,
        betas: Sequence[float] = (0.0, 0.999),
        momentum: float = 0.9,
        w_gan: float = 1.0,
        w_recon: float = 5.0,
        w_recon_positive: float = 5.0,
        w_structure: float = 1.0,
        w_appearance: float = 1.0,
        w_cycle: float = 2.0,
        w_id: float = 1.0,
        w_id_fine: float = 0.2,
        w_positive_id: float = 1.0,
        w_recon_id: float = 0.5,
        w_teacher: float = 2.0,
        w_teacher_fine: float = 0.2,
        r1_weight: float = 0.01,
        ramp_start: int = 30_000,
        ramp_iterations: int = 4_000,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise InputValueError(f"{type(self).__name__} needs num_classes >= 1 (the "
                                  "training identities)")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.num_source_classes = num_classes
        self.appearance_encoder = AppearanceEncoder(
            build_backbone(backbone, weights, last_stride=1, width=backbone_width),
            self.classifier_size(), appearance_parts)
        self.generators = nn.ModuleList(
            Generator(self.appearance_encoder.code_dim, structure_channels, code_channels,
                      residual_blocks, mlp_hidden, decoder_channels)
            for _ in range(self.num_generators))
        self.discriminator = ImageDiscriminator(discriminator_scales, discriminator_width,
                                                discriminator_blocks)
        self.teacher_model: nn.Module | None = None  # set at fit start (not a submodule)
        register_step_state(self)

    #: one generator for all images (DG-Net++: one per domain)
    num_generators = 1

    def classifier_size(self) -> int:
        """Outputs of the identity classifiers (DG-Net: the training identities)."""
        return self.num_source_classes

    @property
    def active_classes(self) -> int:
        """The classes currently trained (the logits beyond are ignored)."""
        return self.num_source_classes

    # -- fit setup ------------------------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        """A :class:`~reidlab.callbacks.GenerationGrid` unless one is configured."""
        present = self.trainer.callbacks if self._trainer else []
        return [] if any(isinstance(c, GenerationGrid) for c in present) else [GenerationGrid()]

    def uses_teacher(self) -> bool:
        return self.hparams.w_teacher > 0

    def setup(self, stage: str) -> None:
        """Refuse data it cannot train on, before anything runs."""
        if stage != "fit" or self._trainer is None:
            return
        hparams = getattr(self.trainer.datamodule, "hparams", {})
        if hparams.get("batches") == "domain_pairs":
            weights = list(hparams.get("batch_type_weights", ()))
            if any(weights[1:]):
                raise InputValueError(
                    f"DGNet trains on the source alone, but the DataModule's "
                    f"batch_type_weights={weights} draw target batches: set them to "
                    "[1, 0, 0, 0] (or train DGNetPP)")
        elif hparams.get("sampler") != "pairs":
            raise InputValueError("DGNet needs image pairs: ReIDDataModule(sampler='pairs') or "
                                  "CrossDomainDataModule(batches='domain_pairs', "
                                  "batch_type_weights=[1, 0, 0, 0])")

    def on_fit_start(self) -> None:
        check_manual_gan_trainer(self.trainer, type(self).__name__,
                                 "each training step has a discriminator-only backward and a "
                                 "generator / appearance-encoder backward")
        if self.uses_teacher():  # outside the state dict and DDP: a plain attribute
            object.__setattr__(self, "teacher_model", self.load_teacher(self.hparams.teacher))

    def load_teacher(self, path: str | None) -> nn.Module:
        """The frozen source-trained Baseline, on this module's device, in eval mode."""
        name = type(self).__name__
        if path is None:
            raise InputValueError(f"{name} needs teacher: a reidlab Baseline checkpoint trained "
                                  "on the source (or w_teacher: 0)")
        if not Path(path).is_file():
            raise MissingFileError(f"the teacher checkpoint {path} does not exist (expected a "
                                   "reidlab Baseline trained on the source)")
        try:
            model = Baseline.load_from_checkpoint(path, map_location="cpu")
        except Exception as err:  # pickle / zip errors, or another module's checkpoint
            raise InputFileError(f"cannot read the teacher {path} as a reidlab Baseline "
                                 f"checkpoint: {type(err).__name__}: {err}") from err
        if model.hparams.num_classes != self.num_source_classes:
            raise InputValueError(f"the teacher {path} classifies {model.hparams.num_classes} "
                                  f"identities, but the source has {self.num_source_classes}: "
                                  "give a Baseline trained on this source")
        return model.to(self.device).eval().requires_grad_(False)

    # -- features -------------------------------------------------------------------------
    def head_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[p | sqrt(0.5) f] / sqrt(1.5)`` with ``p`` and ``f`` the normalised primary and
        fine-grained head features, each summed over the image and its mirror: the cosine of
        two of them is the authors' score ``(p.p' + 0.5 f.f') / 1.5``."""
        both = torch.cat([images, images.flip(-1)])
        out = self.appearance_encoder(both)
        n = len(images)
        primary = F.normalize(out["primary"][0][:n] + out["primary"][0][n:], dim=1)
        fine = F.normalize(out["fine"][0][:n] + out["fine"][0][n:], dim=1)
        return torch.cat([primary, math.sqrt(0.5) * fine], dim=1) / math.sqrt(1.5)

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_features(images)

    # -- schedule -------------------------------------------------------------------------
    def ramp(self) -> float:
        """The factor (0..1) of the ramped loss weights at the current iteration: 0 up to
        ``ramp_start``, then linear over ``ramp_iterations`` (0: at once)."""
        hp = self.hparams
        done = int(self.iteration) - hp.ramp_start
        if hp.ramp_iterations <= 0:
            return float(done >= 0)
        return min(max(done / hp.ramp_iterations, 0.0), 1.0)

    def learning_rates(self) -> list[list[float]]:
        """Learning rate of every param group of :meth:`configure_optimizers`' optimizers at
        the current iteration: step decay at ``lr_milestones``."""
        hp = self.hparams
        factor = hp.lr_gamma ** sum(int(self.iteration) >= m for m in hp.lr_milestones)
        return [[hp.lr_generator * factor], [hp.lr_discriminator * factor],
                [hp.lr_backbone * factor, hp.lr_heads * factor]]

    def configure_optimizers(self):
        hp = self.hparams
        lrs = self.learning_rates()
        adam = dict(betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        encoder = self.appearance_encoder
        heads = [p for h in (encoder.primary, encoder.fine) for p in h.parameters()]
        return [
            torch.optim.Adam(self.generators.parameters(), lr=lrs[0][0], **adam),
            torch.optim.Adam(self.discriminator.parameters(), lr=lrs[1][0], **adam),
            torch.optim.SGD([{"params": list(encoder.backbone.parameters()), "lr": lrs[2][0]},
                             {"params": heads, "lr": lrs[2][1]}],
                            lr=lrs[2][0], momentum=hp.momentum, nesterov=True,
                            weight_decay=hp.weight_decay),
        ]

    def _apply_learning_rates(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        for optimizer, lrs in zip(optimizers, self.learning_rates(), strict=True):
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr

    # -- the pieces DG-Net++ changes --------------------------------------------------------
    def generator_for(self, domain: int) -> Generator:
        """The generator of images of ``domain`` (DG-Net: the only one)."""
        return self.generators[0]

    def labels_known(self, domain: int) -> bool:
        """Whether the labels of ``domain``'s images train the identity losses."""
        return True

    def joint_labels(self, pids: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """Labels in the classifier's space (DG-Net: the pids)."""
        return pids

    def teacher_active(self) -> bool:
        return self.uses_teacher()

    def discriminator_extra_loss(self, out: dict, domains: torch.Tensor) -> dict:
        """Losses of further discriminators trained in the D step (DG-Net++: the domain
        discriminator); ``{}`` here."""
        return {}

    def encoder_extra_loss(self, out: dict, domains: torch.Tensor) -> dict:
        """Further ``(weight, loss)`` terms of E_a (DG-Net++: the domain-adversarial one)."""
        return {}

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        if isinstance(batch, dict):
            batch = batch["pairs"]
        images, pids, domains, positives = batch[0], batch[1], batch[4], batch[5]
        height, width = images.shape[-2:]
        if height % 4 or width % 4:
            raise InputValueError(f"{type(self).__name__} needs image sides divisible by 4 (the "
                                  f"structure code is 1/4 of the image), got {height} x {width}")
        optimizers = self.optimizers()
        self._apply_learning_rates(optimizers)
        with seeded_step(self, images.device):
            logs = self.gan_step(images, positives, pids, domains, optimizers)
        self.iteration += 1
        g_loss = logs.pop("g_loss")
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=len(images))
        self.log("train/g_loss", g_loss, prog_bar=True, batch_size=len(images))

    def forward_pairs(self, images, positives, pids, domains) -> PairPass:
        """E_a on the real images and their positives, E_s, and the generations: the
        self-reconstructions ``G_a(s_a, a_a)``, ``G_b(s_b, a_b)`` and the swaps ``x_ba =
        G_b(s_b, a_a)``, ``x_ab = G_a(s_a, a_b)``. The appearance codes fed to G are
        detached."""
        n = len(images) // 2
        sides = (slice(0, n), slice(n, 2 * n))
        dom = [int(domains[s][0]) for s in sides]
        gens = [self.generator_for(d) for d in dom]
        labels = self.joint_labels(pids, domains)
        out = self.appearance_encoder(torch.cat([images, positives]))
        code = out["code"].detach()
        a = [code[s] for s in sides]
        x = [images[s] for s in sides]
        s_code = [gens[k].encode(x[k]) for k in range(2)]
        cross = [gens[1].decode(s_code[1], a[0]), gens[0].decode(s_code[0], a[1])]
        return PairPass(
            images=images, domains=domains, sides=sides, dom=dom, gens=gens,
            known=[self.labels_known(d) for d in dom], labels=[labels[s] for s in sides],
            x=x, out=out, a=a, a_pos=[code[2 * n:][s] for s in sides], s_code=s_code,
            recon=[gens[k].decode(s_code[k], a[k]) for k in range(2)], cross=cross,
            fakes=torch.cat(cross))

    def discriminator_loss(self, p: PairPass) -> dict[str, torch.Tensor]:
        """D's LSGAN loss on the real images vs the detached swaps, and R1 on the reals."""
        return {"d_gan": lsgan_discriminator_loss(self.discriminator(p.images),
                                                  self.discriminator(p.fakes.detach())),
                "d_r1": r1_penalty(self.discriminator, p.images, self.hparams.r1_weight)}

    def generator_terms(self, p: PairPass) -> dict[str, tuple[float, torch.Tensor]]:
        """``name -> (weight, loss)`` of the E_s / G + E_a update (module docstring)."""
        hp = self.hparams
        ramp, active, sides, x, gens = self.ramp(), self.active_classes, p.sides, p.x, p.gens
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        with _frozen(self.discriminator):
            scores = self.discriminator(p.fakes)
        terms["gan"] = (hp.w_gan, sum(lsgan_generator_loss([o[s] for o in scores])
                                      for s in sides))
        terms["recon"] = (hp.w_recon, sum(F.l1_loss(p.recon[k], x[k]) for k in range(2)))
        positive_recon = [F.l1_loss(gens[k].decode(p.s_code[k], p.a_pos[k]), x[k])
                          for k in range(2) if p.dom[k] == 0]
        if positive_recon:
            terms["recon_positive"] = (hp.w_recon_positive, sum(positive_recon))
        # code reconstructions: x_ba has b's structure (domain b) and a's appearance
        if torch.rand(()) < 0.5:  # E_s learns from the detached generations
            s_rec = [gens[1 - k].encode(p.cross[k].detach()) for k in range(2)]
        else:  # E_s's frozen copy passes the gradient to G
            s_rec = [_frozen_call(gens[1 - k].structure_encoder, p.cross[k]) for k in range(2)]
        rec_out = _frozen_call(self.appearance_encoder, p.fakes, eval_mode=True)  # E_a'
        a_rec = [rec_out["code"][s] for s in sides]  # a_rec[0] = E_a'(x_ba) ~ a_a
        terms["structure"] = (hp.w_structure * ramp,
                              sum(F.l1_loss(s_rec[k], p.s_code[1 - k]) for k in range(2)))
        terms["appearance"] = (hp.w_appearance * ramp,
                               sum(F.l1_loss(a_rec[k], p.a[k]) for k in range(2)))
        cycle = [gens[0].decode(s_rec[1], a_rec[0]),  # x_aba = G_a(E_s(x_ab), E_a'(x_ba))
                 gens[1].decode(s_rec[0], a_rec[1])]  # x_bab
        terms["cycle"] = (hp.w_cycle * ramp, sum(F.l1_loss(cycle[k], x[k]) for k in range(2)))
        recon_id = [F.cross_entropy(rec_out["primary"][1][s][:, :active], p.labels[k])
                    for k, s in enumerate(sides) if p.known[k]]
        if recon_id:
            terms["recon_id"] = (hp.w_recon_id, sum(recon_id))

        def identity(logits: dict, k: int, s: slice) -> torch.Tensor:
            return (F.cross_entropy(logits["primary"][s][:, :active], p.labels[k])
                    + hp.w_id_fine * F.cross_entropy(logits["fine"][s][:, :active], p.labels[k]))

        n2 = len(p.images)
        real = {key: p.out[key][1][:n2] for key in ("primary", "fine")}
        positive = {key: p.out[key][1][n2:] for key in ("primary", "fine")}
        real_id = [identity(real, k, s) for k, s in enumerate(sides) if p.known[k]]
        if real_id:
            terms["id"] = (hp.w_id, sum(real_id))
        positive_id = [identity(positive, k, s) for k, s in enumerate(sides) if p.dom[k] == 0]
        if positive_id:
            terms["positive_id"] = (hp.w_positive_id, sum(positive_id))
        if self.teacher_active():
            terms["teacher"] = (hp.w_teacher * ramp, self.teacher_loss(p.fakes, p.labels,
                                                                       p.known))
        return terms | self.encoder_extra_loss(p.out, p.domains)

    def gan_step(self, images, positives, pids, domains, optimizers) -> dict[str, torch.Tensor]:
        """One D update, then one E_s / G + E_a update against the updated D."""
        opt_gen, opt_dis, opt_app = optimizers[:3]
        p = self.forward_pairs(images, positives, pids, domains)
        with self.toggled_optimizer(opt_dis):
            d_losses = self.discriminator_loss(p)
            opt_dis.zero_grad()
            self.manual_backward(sum(d_losses.values()))
            opt_dis.step()
        d_losses |= self.discriminator_extra_loss(p.out, domains)

        terms = self.generator_terms(p)
        total = sum(w * loss for w, loss in terms.values())
        opt_gen.zero_grad()
        opt_app.zero_grad()
        self.manual_backward(total)
        opt_gen.step()
        opt_app.step()
        active = self.active_classes
        acc = [(p.out["primary"][1][s][:, :active].argmax(1) == p.labels[k]).float().mean()
               for k, s in enumerate(p.sides) if p.known[k]]
        return ({k: v.detach() for k, v in d_losses.items()}
                | {k: loss.detach() for k, (_, loss) in terms.items()}
                | {"g_loss": total.detach(), "acc": torch.stack(acc or [total.new_zeros(())]
                                                                ).mean(),
                   "ramp": torch.tensor(self.ramp())})

    def teacher_loss(self, fakes: torch.Tensor, labels: Sequence[torch.Tensor],
                     known: Sequence[bool]) -> torch.Tensor:
        """KL of the primary head on the detached generations to the teacher's flip-averaged
        distribution, + ``w_teacher_fine`` x the fine-grained head's cross-entropy under the
        structure provider's label (x_ba: b's, x_ab: a's)."""
        hp = self.hparams
        fakes = fakes.detach()
        with torch.no_grad():  # the generations and their mirrors in one pass (eval mode)
            both = self.teacher_model(torch.cat([fakes, fakes.flip(-1)]))["logits"]
            probs = both.float().softmax(1).view(2, len(fakes), -1).mean(0)
        student = self.appearance_encoder(fakes)
        active = self.active_classes
        loss = teacher_kl_loss(student["primary"][1][:, :active], probs)
        n = len(fakes) // 2
        structure_labels = [(slice(0, n), labels[1], known[1]), (slice(n, 2 * n), labels[0],
                                                                 known[0])]
        for s, label, ok in structure_labels:
            if ok:
                loss = loss + hp.w_teacher_fine * F.cross_entropy(
                    student["fine"][1][s][:, :active], label)
        return loss

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dgnet"] = {"iteration": int(self.iteration)}

    # -- pictures -------------------------------------------------------------------------
    @torch.no_grad()
    def generation_examples(self, anchors: torch.Tensor, positives: torch.Tensor,
                            labels: torch.Tensor,
                            targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Generations for fixed images, displayable in [0, 1] (eval mode): ``a`` (the
        anchors), ``b`` (``targets`` when given, else the next pair's anchor), their
        reconstructions and the swaps ``a in b`` = G_b(s_b, a_a) and ``b in a`` =
        G_a(s_a, a_b) (DG-Net++: a from the source, b from the target)."""
        was_training = self.training
        self.eval()
        try:
            x_a = anchors
            x_b = targets if targets is not None else anchors.roll(1, 0)
            gen_a = self.generator_for(0)
            gen_b = self.generator_for(1 if targets is not None else 0)
            code = self.appearance_encoder(torch.cat([x_a, x_b]))["code"]
            a_a, a_b = code.split(len(x_a))
            s_a, s_b = gen_a.encode(x_a), gen_b.encode(x_b)
            columns = {"a": x_a, "b": x_b, "a recon": gen_a.decode(s_a, a_a),
                       "b recon": gen_b.decode(s_b, a_b), "a in b": gen_b.decode(s_b, a_a),
                       "b in a": gen_a.decode(s_a, a_b)}
        finally:
            self.train(was_training)
        return {k: denormalize(v) for k, v in columns.items()}


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters take no gradient (restored after)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _frozen_call(module: nn.Module, images: torch.Tensor, eval_mode: bool = False):
    """``module(images)`` with its parameters and buffers detached (in eval mode if asked):
    gradients reach ``images`` only."""
    state = {k: v.detach() for k, v in module.state_dict(keep_vars=True).items()}
    was_training = module.training
    module.train(was_training and not eval_mode)
    try:
        return functional_call(module, state, (images,))
    finally:
        module.train(was_training)
