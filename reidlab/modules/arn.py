"""ARN: Adaptation and Re-Identification Network (Li et al., "Adaptation and
Re-Identification Network: An Unsupervised Deep Transfer Learning Approach to Person
Re-Identification", CVPR-W 2018).

A backbone E_I maps images of both domains to feature maps X. A shared encoder E_C and
two private encoders, E_S (source) and E_T (target), map X to latent vectors e_c and e_p;
a decoder D_C reconstructs X from the concatenation (e_c, e_p) of either domain; a
classifier C_S (dropout + linear) predicts the source identities from the source e_c.
Training minimises (eq. 5)::

    L = L_class + alpha L_ctrs + beta L_rec + gamma L_diff

with the cross-entropy L_class on source ids (eq. 1), the contrastive L_ctrs on pairs of
source e_c (eq. 2), the reconstruction L_rec of X in both domains (eq. 3) and the
difference (orthogonality) loss L_diff between shared and private features of each
domain's batch (eq. 4). At test time only E_I and E_C are used (Fig. 3): e_c, compared
by cosine similarity.

BatchNorm across domains: the paper feeds both domains "simultaneously" and says nothing
about BN; one BN over the concatenated batch trains with, and tests under, statistics of a
source + target mixture. reidlab keeps per-domain statistics by default (``domain_bn``;
DSBN, Chang et al., CVPR 2019, as in SBase): each domain's images go through E_I, E_C and
D_C as their own BN batch with their own running statistics, and test features use the
target's. ``domain_bn=False`` is the concatenated batch with one BN (``arn_shared_bn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reidlab.losses import contrastive_loss, difference_loss, reconstruction_loss, zero_loss
from reidlab.modules.base import ReIDModule, load_baseline_parts
from reidlab.nn import (
    BNNeck,
    ConvLatentEncoder,
    LatentDecoder,
    StageLatentEncoder,
    bn_domain,
    build_backbone,
    convert_to_domain_bn,
)

SOURCE, TARGET = 0, 1  # domain indices of the DomainBatchNorm statistics

ENCODERS = ("fcn", "layer4")


class ARN(ReIDModule):
    """ARN (paper Sec. 3, implementation details Sec. 4.2).

    Batches come from :class:`~reidlab.datamodules.CrossDomainDataModule`: ``{"source":
    (img, pid, camid, idx), "target": (img, pid, camid, idx)}``; the target's labels are
    never read (ARN uses no pseudo-labels, so the target side comes in random batches).
    Both domains are trained in every step (the paper feeds them "simultaneously"): with
    ``domain_bn`` each domain is its own BN batch through E_I, E_C and D_C, without it they
    go through as one concatenated batch; E_S sees the source part, E_T the target part.

    Encoder forms (``encoder``):

    * ``"fcn"`` (the paper): E_I is the ResNet up to its last stage, X its map (7x7x2048
      for 224x224 inputs); E_C, E_S, E_T are three-layer fully convolutional networks +
      global average pooling (:class:`~reidlab.nn.ConvLatentEncoder`), randomly
      initialised;
    * ``"layer4"`` (the authors' code): E_I stops after ``layer3``, X is that map; E_C,
      E_S, E_T are independent copies of the backbone's ``layer4`` (all starting from its
      weights, e.g. ImageNet or the source Baseline) + average pooling. From a
      ``pretrained`` Baseline, e_c starts as the Baseline's pooled feature, so C_S starts
      as the Baseline's classifier with its BNNeck folded in (``W' = W diag(gamma /
      sigma)``, ``b' = W (beta - mu gamma / sigma)``, the eval-mode BN's statistics): the
      same logits on e_c as the Baseline's on its feature. (With ``"fcn"`` E_C is random,
      and so is C_S.)

    The latent size is the last stage's width (2048 for ResNet-50, less for narrow CPU
    backbones). D_C (:class:`~reidlab.nn.LatentDecoder`) maps (e_c, e_p) to X's shape
    for any input size.

    Loss normalisations (the paper writes sums; its weights alpha 0.01, beta 2.0, gamma
    1500 only make sense for particular scales, see :mod:`reidlab.losses.arn`): L_class is
    the mean cross-entropy; L_ctrs the sum over pairs of source images of the squared
    (hinged) Euclidean distances between L2-normalised e_c (a large number, hence alpha =
    0.01); L_rec the per-element mean squared error, summed over the two domains, with X
    detached as the target (the reconstruction trains encoders and decoder, not E_I's
    output); L_diff the mean over entries of ``(H_c^T H_p)^2`` with L2-normalised rows,
    summed over the two domains (a small number, hence gamma = 1500).

    Optimisation (Sec. 4.2): SGD with one parameter group per module kind: E_I at
    ``backbone_lr`` (1e-7), E_C/E_S/E_T/D_C at ``lr`` (1e-3), C_S at ``classifier_lr``
    (2e-3). The paper gives neither momentum nor weight decay: 0.9 and 5e-4, the usual
    re-ID SGD settings. E_I is tuned "only in the first few epochs": after
    ``backbone_epochs`` its learning rate is 0 and it runs without gradients (its
    parameters still receive a zero gradient so DDP sees every parameter used; its
    batch-norm layers stay in train mode and keep updating their running statistics).
    Without the source losses E_I is never tuned (the paper: "without L_ctrs, L_class, we
    are not able to fine-tune E_I"): it is frozen (``requires_grad=False``) and left out
    of the optimizer. The paper gives no learning-rate decay; ``milestones`` / ``gamma``
    add a step decay to every group.

    Ablations (paper Table 2): ``private_encoders=False`` builds no E_S / E_T (D_C
    reconstructs X from e_c alone; no L_diff); ``source_losses=False`` builds no C_S and
    drops L_class and L_ctrs; both off is "reconstruction only". Modules an ablation does
    not use are not built, so DDP never meets an unused parameter.

    Args:
        num_classes: source training identities (linked from the DataModule by the CLI).
        pretrained: Lightning checkpoint (or state dict) of a source-trained
            :class:`~reidlab.modules.Baseline` whose backbone initialises E_I (and, with
            ``encoder="layer4"``, the three encoder copies); None starts from ``weights``.
            (Checkpoints store it as None: ``ARN.load_from_checkpoint`` does not need it.)
        backbone: E_I's backbone (``resnet50``, ..., ``mobilenet_v2``).
        weights: E_I initialisation when not ``pretrained`` (``imagenet``, a file, None).
        last_stride: stride of the last backbone stage (2: the paper's plain ResNet-50).
        backbone_width: channel multiplier (< 1 for CPU runs).
        encoder: ``"fcn"`` (paper) or ``"layer4"`` (authors' code), see above.
        encoder_hidden: inner width of the ``fcn`` encoders (default: X's channels / 4).
        decoder_hidden: inner width of D_C (default: X's channels / 4).
        decoder_grid: size of D_C's learned map before it is resized to X's size (X's usual
            size is best: 7x7 for 224x224 inputs with last stride 2).
        dropout: dropout probability of C_S.
        private_encoders: build E_S and E_T (False: the "w/o E_S, E_T" ablation).
        source_losses: use L_class and L_ctrs (False: the "w/o L_ctrs, L_class" ablation).
        margin: contrastive margin m on L2-normalised features (1.0).
        contrastive_reduction: ``"sum"`` (eq. 2) or ``"mean"`` over pairs.
        class_weight: weight of L_class (1 in eq. 5; a knob for the source-fit study in
            docs/benchmarks.md).
        contrastive_weight: alpha (0.01).
        reconstruction_weight: beta (2.0).
        difference_weight: gamma (1500).
        lr: SGD learning rate of E_C, E_S, E_T and D_C (1e-3).
        backbone_lr: SGD learning rate of E_I (1e-7).
        classifier_lr: SGD learning rate of C_S (2e-3).
        backbone_epochs: epochs during which E_I is tuned (None: all of them).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        milestones: epochs at which every learning rate is multiplied by ``gamma``.
        gamma: step decay factor.
        domain_bn: domain-specific BatchNorm statistics (False: one BN over the
            concatenated source + target batch, the ablation).
    """

    def __init__(
        self,
        num_classes: int = 0,
        pretrained: str | None = None,
        backbone: str = "resnet50",
        weights: str | None = "imagenet",
        last_stride: int = 2,
        backbone_width: float = 1.0,
        encoder: str = "fcn",
        encoder_hidden: int | None = None,
        decoder_hidden: int | None = None,
        decoder_grid: tuple[int, int] = (7, 7),
        dropout: float = 0.5,
        private_encoders: bool = True,
        source_losses: bool = True,
        margin: float = 1.0,
        contrastive_reduction: str = "sum",
        class_weight: float = 1.0,
        contrastive_weight: float = 0.01,
        reconstruction_weight: float = 2.0,
        difference_weight: float = 1500.0,
        lr: float = 1e-3,
        backbone_lr: float = 1e-7,
        classifier_lr: float = 2e-3,
        backbone_epochs: int | None = 5,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        domain_bn: bool = True,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if source_losses and num_classes < 1:
            raise ValueError("ARN needs num_classes >= 1 (source identities) for L_class")
        if contrastive_reduction not in ("sum", "mean"):
            raise ValueError(f"contrastive_reduction must be 'sum' or 'mean', "
                             f"got {contrastive_reduction!r}")
        self.save_hyperparameters()
        net = build_backbone(backbone, None if pretrained else weights, last_stride,
                             backbone_width)
        neck = BNNeck(net.out_channels, num_classes) if pretrained and source_losses else None
        if pretrained:
            load_baseline_parts(pretrained, {"backbone.": net} | ({"neck.": neck} if neck
                                                                  else {}))
        if encoder == "layer4":
            stage = net.pop_last_stage()

            def make_encoder() -> nn.Module:
                return StageLatentEncoder(stage)
        else:
            def make_encoder() -> nn.Module:
                return ConvLatentEncoder(net.out_channels, net.out_channels, encoder_hidden)
        self.backbone = net  # E_I
        self.shared = make_encoder()  # E_C
        self.private_source = make_encoder() if private_encoders else None  # E_S
        self.private_target = make_encoder() if private_encoders else None  # E_T
        latent = self.shared.latent_dim
        self.decoder = LatentDecoder(latent * (2 if private_encoders else 1),
                                     net.out_channels, decoder_grid, decoder_hidden)  # D_C
        self.classifier = (nn.Sequential(nn.Dropout(dropout), nn.Linear(latent, num_classes))
                           if source_losses else None)  # C_S
        if encoder == "layer4" and neck is not None:
            self._init_classifier_from(neck)
        if domain_bn:  # after loading: the Baseline's statistics start both domains
            convert_to_domain_bn(self)
        if not self.backbone_tuned(0):
            self.backbone.requires_grad_(False)

    @torch.no_grad()
    def _init_classifier_from(self, neck: BNNeck) -> None:
        """C_S = the Baseline's classifier with its (eval-mode) BNNeck folded in."""
        bn, linear = neck.bn, self.classifier[1]
        if linear.weight.shape != neck.classifier.weight.shape:
            return  # e.g. a latent size other than the Baseline's feature: stays random
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        linear.weight.copy_(neck.classifier.weight * scale)
        linear.bias.copy_(neck.classifier.weight @ (bn.bias - bn.running_mean * scale))

    @property
    def feature_dim(self) -> int:
        return self.shared.latent_dim

    def backbone_tuned(self, epoch: int) -> bool:
        """Whether E_I is fine-tuned in ``epoch``."""
        hp = self.hparams
        return hp.source_losses and (hp.backbone_epochs is None or epoch < hp.backbone_epochs)

    # -- features --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The shared latent feature e_c = E_C(E_I(images)), ``(N, feature_dim)``, under the
        target's BN statistics."""
        with bn_domain(self, TARGET):
            return self.shared(self.backbone(images))

    def test_features(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)

    # -- training --------------------------------------------------------------------------
    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """X = E_I(images); without gradients once E_I is no longer tuned."""
        if self.backbone_tuned(self.current_epoch):
            return self.backbone(images)
        with torch.no_grad():
            return self.backbone(images)

    def forward_pair(self, source_images: torch.Tensor,
                     target_images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training forward pass of a source and a target batch.

        Returns the maps ``x`` (X of both domains, source first), ``x_hat`` (D_C's
        reconstructions, same order and shape), ``shared`` (e_c of both domains) and,
        with private encoders, ``private`` (e_p^s from E_S, then e_p^t from E_T).
        """
        if not self.hparams.domain_bn:  # one BN batch of both domains
            return self.encode_decode(self.feature_maps(torch.cat([source_images,
                                                                   target_images])),
                                      len(source_images))
        with bn_domain(self, SOURCE):
            src = self.encode_decode(self.feature_maps(source_images), len(source_images))
        with bn_domain(self, TARGET):
            tgt = self.encode_decode(self.feature_maps(target_images), 0)
        return {k: torch.cat([src[k], tgt[k]]) for k in src}

    def encode_decode(self, x: torch.Tensor, num_source: int) -> dict[str, torch.Tensor]:
        """E_C, E_S (first ``num_source`` rows) / E_T (the others) and D_C on maps X."""
        shared = self.shared(x)
        out = {"x": x, "shared": shared}
        if self.private_source is not None:
            parts = [enc(part) for enc, part in ((self.private_source, x[:num_source]),
                                                 (self.private_target, x[num_source:]))
                     if len(part)]
            out["private"] = torch.cat(parts)
            latent = torch.cat([shared, out["private"]], dim=1)
        else:
            latent = shared
        out["x_hat"] = self.decoder(latent, tuple(x.shape[-2:]))
        return out

    def losses(self, out: dict[str, torch.Tensor],
               source_pids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted L_class (eq. 1), L_ctrs (eq. 2), L_rec (eq. 3), L_diff (eq. 4) of one
        :meth:`forward_pair` output whose first ``len(source_pids)`` rows are source."""
        hp = self.hparams
        ns = len(source_pids)
        target = out["x"].detach()
        losses = {"reconstruction": reconstruction_loss(out["x_hat"][:ns], target[:ns])
                  + reconstruction_loss(out["x_hat"][ns:], target[ns:])}
        shared = out["shared"]
        if "private" in out:
            private = out["private"]
            losses["difference"] = (difference_loss(shared[:ns], private[:ns])
                                    + difference_loss(shared[ns:], private[ns:]))
        if self.classifier is not None:
            losses["class"] = F.cross_entropy(self.classifier(shared[:ns]), source_pids)
            losses["contrastive"] = contrastive_loss(shared[:ns], source_pids, hp.margin,
                                                     hp.contrastive_reduction)
        return losses

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_total, eq. 5."""
        hp = self.hparams
        weights = {"class": hp.class_weight, "contrastive": hp.contrastive_weight,
                   "reconstruction": hp.reconstruction_weight,
                   "difference": hp.difference_weight}
        return sum(weights[k] * v for k, v in losses.items())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        s_img, s_pid = batch["source"][0], batch["source"][1]
        t_img = batch["target"][0]
        out = self.forward_pair(s_img, t_img)
        losses = self.losses(out, s_pid)
        loss = self.total_loss(losses)
        if not self.backbone_tuned(self.current_epoch) and any(
                p.requires_grad for p in self.backbone.parameters()):
            # zero gradients for a frozen E_I that still requires them (DDP needs them all)
            loss = loss + zero_loss(self.backbone)
        size = len(s_pid) + len(t_img)
        # every loss term on the progress bar: what a user watches on a long step
        self.log_dict({f"train/{k}": v for k, v in losses.items()} | {"train/loss": loss},
                      prog_bar=True, batch_size=size)
        if self.classifier is not None:  # how well C_S fits the source (without dropout)
            with torch.no_grad():
                logits = self.classifier[1](out["shared"][: len(s_pid)])
            self.log("train/source_accuracy", (logits.argmax(1) == s_pid).float().mean(),
                     batch_size=len(s_pid), on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        groups = []
        if any(p.requires_grad for p in self.backbone.parameters()):
            groups.append({"name": "backbone", "params": list(self.backbone.parameters()),
                           "lr": hp.backbone_lr})
        modules = [m for m in (self.shared, self.private_source, self.private_target,
                               self.decoder) if m is not None]
        groups.append({"name": "encoders_decoder",
                       "params": [p for m in modules for p in m.parameters()], "lr": hp.lr})
        if self.classifier is not None:
            groups.append({"name": "classifier", "params": list(self.classifier.parameters()),
                           "lr": hp.classifier_lr})
        optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        factors = [self.backbone_lr_factor if g["name"] == "backbone" else self.lr_factor
                   for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "epoch"}}

    def lr_factor(self, epoch: int) -> float:
        """Step decay: ``gamma`` to the number of ``milestones`` reached."""
        hp = self.hparams
        return hp.gamma ** sum(epoch >= m for m in hp.milestones)

    def backbone_lr_factor(self, epoch: int) -> float:
        """:meth:`lr_factor` while E_I is tuned, then 0."""
        return self.lr_factor(epoch) if self.backbone_tuned(epoch) else 0.0

