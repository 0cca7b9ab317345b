"""Clustering quality of features and of a method's own clusters: NMI, ARI, purity."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def purity(assignments: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose label is the majority label of their cluster."""
    a, y = assignments.long().cpu(), labels.long().cpu()
    n_labels = int(y.max()) + 1
    _, a = a.unique(return_inverse=True)
    table = torch.zeros(int(a.max()) + 1, n_labels, dtype=torch.long)
    table.index_put_((a, y), torch.ones_like(a), accumulate=True)
    return float(table.max(dim=1).values.sum()) / len(y)


def assignment_metrics(assignments: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """NMI and ARI (scikit-learn) and purity of a hard assignment against the labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a, y = assignments.long().cpu().numpy(), labels.long().cpu().numpy()
    return {"nmi": float(normalized_mutual_info_score(y, a)),
            "ari": float(adjusted_rand_score(y, a)),
            "purity": purity(assignments, labels),
            "clusters_used": int(len(set(a.tolist())))}


def kmeans_clustering_metrics(features: torch.Tensor, labels: torch.Tensor, k: int,
                              seed: int = 0) -> dict[str, float]:
    """faiss k-means (k = number of classes) on L2-normalised features, then NMI/ARI/purity."""
    from ssl_zoo.evaluation.faiss_utils import kmeans

    x = F.normalize(features.float(), dim=1)
    _, assign, _ = kmeans(x, k, niter=50, seed=seed, nredo=3)
    return {**assignment_metrics(assign, labels), "k": k}
