"""DG-Net++: joint disentangling and adaptation (Zou et al., "Joint Disentangling and
Adaptation for Cross-Domain Person Re-Identification", ECCV 2020); settings from METHODS.md,
checked against the authors' code and configs.

DG-Net (:class:`~reidlab.modules.DGNet`) extended to a labelled source and an unlabelled
target: one shared appearance encoder E_a, one generator (structure encoder + decoder) per
domain, both started from a source-trained DG-Net's generator, and one shared image
discriminator. Each step is one batch type of
:class:`~reidlab.datamodules.DomainPairBatchSampler` (source-source, target-target,
source-target, target-source), so appearance crosses domains: ``x_ba = G_b(s_b, a_a)``.

Training runs in rounds (:meth:`DGNetPP.round_at`, by epoch), each starting with a
re-clustering of the target (:class:`~reidlab.callbacks.PseudoLabeling` with DG-Net++'s
settings: the test feature, i.e. the flip-summed head features, k-reciprocal re-ranked
distance, DBSCAN eps 0.45 / min_samples 7), new classifier layers over source ids +
clusters (a fixed capacity), a new domain discriminator and new optimizers:

- round 0, adversarial alignment: target images are the clustering inliers, their labels
  unused; the domain discriminator on E_a's global feature (LSGAN, source 0 / target 1)
  and E_a's adversarial loss pushing target features to "source"; the teacher loss as in
  DG-Net (teacher distribution zero-padded over the clusters);
- rounds >= 1, self-training: the target's pseudo-labels train the identity losses, no
  source-source batches, no teacher, no domain discriminator, E_a's learning rates x60.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from reidlab.callbacks.pseudo_labeling import PseudoLabeling
from reidlab.errors import InputValueError
from reidlab.losses.dgnet import domain_adversarial_loss
from reidlab.modules.base import load_checkpoint_parts
from reidlab.modules.dgnet import DGNet, _frozen
from reidlab.nn.dgnet import DomainDiscriminator


class DGNetPP(DGNet):
    """DG-Net++ on a :class:`~reidlab.datamodules.CrossDomainDataModule` with
    ``batches="domain_pairs"``; train with ``reload_dataloaders_every_n_epochs=1``.

    Args:
        num_classes: source training identities (linked from the datamodule by the CLI).
        pretrained: a :class:`~reidlab.modules.DGNet` checkpoint trained on the source: its
            E_a (backbone and head bottlenecks; the classifiers are new), its generator (for
            both domains) and its image discriminator.
        teacher: the source-trained :class:`~reidlab.modules.Baseline` checkpoint of
            round 0's teacher loss (not needed when the fit starts after round 0, or with
            ``w_teacher = 0``).
        max_clusters: capacity of the classifiers beyond the source ids: they have
            ``num_classes + max_clusters`` outputs in every round (one shape for DDP and
            checkpoints), of which the first ``num_classes + K`` are trained. A clustering
            with more than ``max_clusters`` clusters stops the fit with an error.
        round0_epochs: epochs of round 0 (adversarial alignment; 22).
        round_epochs: epochs of every self-training round (2).
        self_training_lr_factor: E_a's learning-rate factor from round 1 (60).
        lr_domain: Adam learning rate of the domain discriminator (1e-5).
        domain_hidden: the domain discriminator's hidden widths (1024, 512, 256).
        w_domain: weight of the domain-adversarial loss in round 0 (1).
        lr_generator, lr_discriminator, lr_backbone, lr_heads: constant learning rates (the
            authors rebuild their schedulers every round): 1e-6, 1e-6, 1e-5, 1e-4.
        ramp_start, ramp_iterations: the ramp of :class:`DGNet` (0: the DG-Net it starts
            from has finished its ramp).
        **kwargs: the other arguments of :class:`DGNet` (architecture, loss weights).
    """

    num_generators = 2
    #: GenerationGrid passes fixed target images as the ``b`` side
    generates_across_domains = True

    def __init__(
        self,
        num_classes: int = 0,
        pretrained: str | None = None,
        teacher: str | None = None,
        max_clusters: int = 8000,
        round0_epochs: int = 22,
        round_epochs: int = 2,
        self_training_lr_factor: float = 60.0,
        lr_domain: float = 1e-5,
        domain_hidden: Sequence[int] = (1024, 512, 256),
        w_domain: float = 1.0,
        lr_generator: float = 1e-6,
        lr_discriminator: float = 1e-6,
        lr_backbone: float = 1e-5,
        lr_heads: float = 1e-4,
        ramp_start: int = 0,
        ramp_iterations: int = 0,
        **kwargs: Any,
    ) -> None:
        if max_clusters < 1:
            raise InputValueError(f"max_clusters must be >= 1, got {max_clusters}")
        if round0_epochs < 0 or round_epochs < 1:
            raise InputValueError(f"need round0_epochs >= 0 and round_epochs >= 1, got "
                                  f"{round0_epochs} and {round_epochs}")
        self.max_clusters = max_clusters
        super().__init__(num_classes=num_classes, teacher=teacher, lr_generator=lr_generator,
                         lr_discriminator=lr_discriminator, lr_backbone=lr_backbone,
                         lr_heads=lr_heads, ramp_start=ramp_start,
                         ramp_iterations=ramp_iterations, **kwargs)
        self.domain_discriminator = DomainDiscriminator(
            self.appearance_encoder.backbone.out_channels, domain_hidden)
        self.round: int | None = None  # the round being trained (None: before the first)
        self.num_clusters = 0
        if pretrained is not None:
            encoder = self.appearance_encoder
            load_checkpoint_parts(
                pretrained, {"appearance_encoder.backbone.": encoder.backbone,
                             "appearance_encoder.primary.bottleneck.": encoder.primary.bottleneck,
                             "appearance_encoder.fine.bottleneck.": encoder.fine.bottleneck,
                             "generators.0.": self.generators[0],
                             "discriminator.": self.discriminator},
                required="generators.0.", what="reidlab DGNet trained on the source")
            self.generators[1].load_state_dict(self.generators[0].state_dict())

    def classifier_size(self) -> int:
        return self.num_source_classes + self.max_clusters

    @property
    def active_classes(self) -> int:
        return self.num_source_classes + self.num_clusters

    # -- rounds ---------------------------------------------------------------------------
    def round_at(self, epoch: int) -> int:
        """The round of ``epoch``: 0 for the first ``round0_epochs``, then one per
        ``round_epochs``."""
        hp = self.hparams
        return 0 if epoch < hp.round0_epochs else 1 + (epoch - hp.round0_epochs) // hp.round_epochs

    def reclusters_after(self, epoch: int) -> bool:
        """PseudoLabeling's schedule: re-cluster when the next epoch starts a round."""
        return self.round_at(epoch + 1) != self.round_at(epoch)

    def on_pseudo_labels(self, labels: np.ndarray, centers: torch.Tensor,
                         features: torch.Tensor, epoch: int | None = None) -> None:
        """New labels start a round (:meth:`enter_round`)."""
        self.enter_round(self.round_at(epoch or 0), int(len(centers)))

    def enter_round(self, round_index: int, num_clusters: int) -> None:
        """Re-create the classifier layers (keeping the 2048 -> 512 bottlenecks) for the
        source ids + ``num_clusters`` clusters, the domain discriminator and the optimizers'
        state, and set the round's batch types (no source-source from round 1)."""
        if num_clusters > self.max_clusters:
            raise InputValueError(
                f"the target clustering found {num_clusters} clusters, more than "
                f"max_clusters={self.max_clusters}: raise max_clusters (the classifiers' "
                "fixed capacity)")
        self.round, self.num_clusters = round_index, num_clusters
        for head in (self.appearance_encoder.primary, self.appearance_encoder.fine):
            fresh = head.new_classifier(self.classifier_size())
            head.classifier.load_state_dict(fresh.state_dict())  # in place: same parameters
        for module in self.domain_discriminator.modules():
            if isinstance(module, (nn.Linear, nn.BatchNorm1d)):
                module.reset_parameters()
                if isinstance(module, nn.BatchNorm1d):
                    module.reset_running_stats()
        self.reset_pseudo_label_optimizer_state()
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "set_batch_type_weights"):
            weights = list(dm.hparams.batch_type_weights)
            if round_index >= 1:
                weights[0] = 0.0  # source-source
            if num_clusters == 0:  # every target image an outlier: nothing to pair
                rank_zero_warn(f"round {round_index}: the clustering found no target cluster; "
                               "the round trains on source-source batches only")
                weights = [1.0, 0.0, 0.0, 0.0]
            dm.set_batch_type_weights(tuple(weights))

    def reset_pseudo_label_optimizer_state(self) -> None:
        """Every optimizer starts the round afresh (the authors re-create them)."""
        if self._trainer is None:
            return
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()

    def learning_rates(self) -> list[list[float]]:
        hp = self.hparams
        factor = hp.self_training_lr_factor if (self.round or 0) >= 1 else 1.0
        return [[hp.lr_generator], [hp.lr_discriminator],
                [hp.lr_backbone * factor, hp.lr_heads * factor], [hp.lr_domain]]

    def configure_optimizers(self):
        hp = self.hparams
        return [*super().configure_optimizers(),
                torch.optim.Adam(self.domain_discriminator.parameters(), lr=hp.lr_domain,
                                 betas=tuple(hp.betas), weight_decay=hp.weight_decay)]

    # -- fit setup ------------------------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        """GenerationGrid and, unless configured, PseudoLabeling with DG-Net++'s settings."""
        callbacks = super().configure_callbacks()
        present = self.trainer.callbacks if self._trainer else []
        if not any(isinstance(c, PseudoLabeling) for c in present):
            callbacks.append(PseudoLabeling(distance="reranked", eps=0.45, min_samples=7, k1=20,
                                            k2=6, lambda_value=0.3))
        return callbacks

    def uses_teacher(self) -> bool:
        first = self.round_at(self.trainer.current_epoch) if self.round is None else self.round
        return self.hparams.w_teacher > 0 and self.hparams.round0_epochs > 0 and first == 0

    def setup(self, stage: str) -> None:
        """Refuse a fit it cannot run, before the first clustering."""
        if stage != "fit" or self._trainer is None:
            return
        trainer = self.trainer
        hparams = getattr(trainer.datamodule, "hparams", {})
        if hparams.get("batches") != "domain_pairs":
            raise InputValueError("DGNetPP needs a CrossDomainDataModule with batches: "
                                  "domain_pairs")
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise InputValueError("DGNetPP needs Trainer(reload_dataloaders_every_n_epochs=1): "
                                  "every round changes the pseudo-labels and batch types")

    # -- the pieces of DG-Net it changes --------------------------------------------------
    def generator_for(self, domain: int):
        return self.generators[domain]

    def labels_known(self, domain: int) -> bool:
        return domain == 0 or (self.round or 0) >= 1

    def joint_labels(self, pids: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """Source ids first, then the clusters: ``pid + domain x num_source_classes``
        (unlabelled samples stay -1)."""
        return torch.where(pids >= 0, pids + domains * self.num_source_classes, pids)

    def teacher_active(self) -> bool:
        return self.round == 0 and self.hparams.w_teacher > 0

    def _adversarial(self) -> bool:
        return self.round == 0 and self.hparams.w_domain > 0

    def discriminator_extra_loss(self, out: dict, domains: torch.Tensor) -> dict:
        """Round 0: one update of the domain discriminator on the detached global features
        of the real images (LSGAN, source 0 / target 1, summed over the batch)."""
        if not self._adversarial():
            return {}
        opt_domain = self.optimizers()[3]
        n = len(domains)
        with self.toggled_optimizer(opt_domain):
            scores = self.domain_discriminator(out["global"][:n].detach())
            source = domains == 0
            loss = (domain_adversarial_loss(scores[source], 0.0)
                    + domain_adversarial_loss(scores[~source], 1.0))
            opt_domain.zero_grad()
            self.manual_backward(loss)
            opt_domain.step()
        return {"d_domain": loss}

    def encoder_extra_loss(self, out: dict, domains: torch.Tensor) -> dict:
        """Round 0: E_a's domain-adversarial loss, the target features' scores pushed to
        "source" (0)."""
        target = domains == 1
        if not self._adversarial() or not target.any():
            return {}
        with _frozen(self.domain_discriminator):
            scores = self.domain_discriminator(out["global"][: len(domains)][target])
        return {"domain": (self.hparams.w_domain, domain_adversarial_loss(scores, 0.0))}

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dgnetpp"] = {"round": self.round, "num_clusters": self.num_clusters}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("dgnetpp")
        if saved is not None:
            self.round, self.num_clusters = saved["round"], saved["num_clusters"]
