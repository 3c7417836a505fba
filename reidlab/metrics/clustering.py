"""Quality of pseudo-labels against true identities (for monitoring, never for training)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pseudo_label_quality(labels: np.ndarray, true_ids: np.ndarray) -> dict[str, float]:
    """Agreement of pseudo-labels (``-1`` = outlier) with the true identities.

    * ``ari``, ``nmi``: adjusted Rand index and normalised mutual information, every outlier
      counted as a cluster of its own;
    * ``pair_precision``: of the pairs put in one cluster, the fraction of one identity;
    * ``pair_recall``: of the pairs of one identity (outliers included), the fraction put
      in one cluster;
    * ``num_clusters``, ``outlier_fraction``.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    true_ids = np.asarray(true_ids).reshape(-1)
    if labels.shape != true_ids.shape:
        raise ValueError(f"{labels.size} labels for {true_ids.size} identities")
    n = labels.size
    outlier = labels < 0
    singletons = labels.copy()
    singletons[outlier] = labels.max(initial=-1) + 1 + np.arange(int(outlier.sum()))
    clustered = ~outlier
    true_pairs = _pairs(np.unique(true_ids, return_counts=True)[1])
    if clustered.any():
        table = contingency_matrix(labels[clustered], true_ids[clustered], sparse=True)
        same_both = _pairs(table.data)
        pred_pairs = _pairs(np.asarray(table.sum(1)).ravel())
    else:
        same_both = pred_pairs = 0.0
    return {
        "num_clusters": float(np.unique(labels[clustered]).size),
        "outlier_fraction": float(outlier.mean()) if n else 0.0,
        "ari": float(adjusted_rand_score(true_ids, singletons)) if n else 0.0,
        "nmi": float(normalized_mutual_info_score(true_ids, singletons)) if n else 0.0,
        "pair_precision": same_both / pred_pairs if pred_pairs else 0.0,
        "pair_recall": same_both / true_pairs if true_pairs else 0.0,
    }
