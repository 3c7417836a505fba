"""ARN losses (Li et al., "Adaptation and Re-Identification Network", CVPR-W 2018, Sec. 3):
contrastive loss on source shared features (eq. 2), feature-map reconstruction (eq. 3)
and the shared/private difference loss (eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 1.0,
                     reduction: str = "sum") -> torch.Tensor:
    """L_ctrs, ARN eq. 2 (Hadsell et al. 2006), over every pair of samples in the batch.

    ``d_ij`` is the Euclidean distance between the L2-normalised features (in [0, 2]; the
    distance ARN's cosine test metric ranks by, and a margin that does not depend on the
    feature scale). A pair with the same label costs ``d_ij^2``, a pair with different
    labels ``max(0, margin - d_ij)^2``::

        L_ctrs = sum_{i<j} lambda_ij d_ij^2 + (1 - lambda_ij) max(0, m - d_ij)^2

    Each unordered pair counts once (eq. 2's sum over ordered pairs is exactly twice
    this). ``reduction="sum"`` follows eq. 2, a sum that grows with the batch, which is
    why the paper weights it by alpha = 0.01 ("the larger value of L_ctrs");
    ``"mean"`` averages over the pairs.

    Args:
        features: ``(N, D)`` features (ARN: e_c of the source images).
        labels: ``(N,)`` identities.
        margin: m, the radius on the unit sphere within which different identities are
            pushed apart (1.0: cosine similarity below 0.5).
        reduction: ``"sum"`` or ``"mean"`` over the ``N (N - 1) / 2`` pairs.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"expected (N, D) features and (N,) labels, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    x = F.normalize(features.float(), dim=1)
    i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    sq = (x[i] - x[j]).pow(2).sum(1)
    dist = sq.clamp(min=1e-12).sqrt()  # finite gradient for coincident features
    same = labels[i] == labels[j]
    per_pair = torch.where(same, sq, (margin - dist).clamp(min=0).pow(2))
    if reduction == "sum" or len(per_pair) == 0:  # no pairs: 0, still in the graph
        return per_pair.sum()
    return per_pair.mean()


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One domain's term of L_rec, ARN eq. 3: ``||X_i - X_hat_i||_2^2`` averaged over the
    samples and divided by the map size ``C x H x W`` (mean squared error per element).

    Per element, so that the paper's beta = 2.0 ("a larger weight to enforce the
    reconstruction") is a weight of the order of the other terms whatever the map size.
    Pass a detached ``target`` to keep the reconstruction from reshaping X itself.
    """
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    return F.mse_loss(reconstruction.float(), target.float())


def difference_loss(shared: torch.Tensor, private: torch.Tensor,
                    normalize: bool = True) -> torch.Tensor:
    """One domain's term of L_diff, ARN eq. 4 (after DSN, Bousmalis et al. 2016):
    ``||H_c^T H_p||_F^2`` with H_c, H_p the ``(B, D)`` matrices whose rows are the shared
    and private features of one batch, divided by ``D_c x D_p`` (mean over the entries).

    With ``normalize`` (the default) the rows are L2-normalised first: the loss then
    constrains directions only, so it cannot be lowered by shrinking the private features
    (the decoder would compensate), and its scale is fixed: for a batch of B unit rows it
    is ``sum_ij cos_c(i, j) cos_p(i, j) / (D_c D_p)``, at most ``B^2 / (D_c D_p)``, a
    small number (2.4e-4 for B = 32, D = 2048) that the paper's gamma = 1500 brings to
    the order of the other terms. Its value grows as ``1 / D^2`` for narrower latent features.
    Without ``normalize``: the raw ``||H_c^T H_p||_F^2 / (D_c D_p)``.
    """
    if shared.ndim != 2 or private.ndim != 2 or len(shared) != len(private):
        raise ValueError(f"expected (B, D_c) and (B, D_p) matrices, got "
                         f"{tuple(shared.shape)} and {tuple(private.shape)}")
    h_c, h_p = shared.float(), private.float()
    if normalize:
        h_c, h_p = F.normalize(h_c, dim=1), F.normalize(h_p, dim=1)
    return (h_c.T @ h_p).pow(2).mean()
