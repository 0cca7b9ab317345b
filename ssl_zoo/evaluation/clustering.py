"""Clustering quality of features and of a method's own clusters: NMI, ARI, purity.

NMI (arithmetic-mean normalisation, scikit-learn's default) and ARI (Hubert and Arabie 1985) come
from scikit-learn; purity (Manning et al., Introduction to IR, Sec. 16.3) is computed here: each
cluster is credited with its most frequent label.
"""

from __future__ import annotations

import torch

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.faiss_utils import as_float32_matrix, kmeans


def _as_long(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().cpu().reshape(-1)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise UserError(f"{name} must be integer ids, got non-integer values")
    return t.long()


def contingency(assignments, labels) -> torch.Tensor:
    """Counts (clusters used, labels used): entry (i, j) = # samples of cluster i with label j.

    Rows and columns are the sorted distinct ids that occur; ids need not be contiguous.
    """
    a, y = _as_long(assignments, "assignments"), _as_long(labels, "labels")
    if a.numel() != y.numel():
        raise UserError(f"{a.numel()} cluster assignments for {y.numel()} labels")
    if a.numel() == 0:
        raise UserError("clustering metrics need at least one sample")
    _, ai = a.unique(return_inverse=True)
    _, yi = y.unique(return_inverse=True)
    table = torch.zeros(int(ai.max()) + 1, int(yi.max()) + 1, dtype=torch.long)
    table.index_put_((ai, yi), torch.ones_like(ai), accumulate=True)
    return table


def purity(assignments, labels) -> float:
    """Fraction of samples whose label is the most frequent label of their cluster."""
    table = contingency(assignments, labels)
    return float(table.max(dim=1).values.sum()) / float(table.sum())


def assignment_metrics(assignments, labels) -> dict[str, float]:
    """NMI, ARI and purity of any hard assignment (k-means, SwAV prototypes) against labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    table = contingency(assignments, labels)  # validates lengths
    a = _as_long(assignments, "assignments").numpy()
    y = _as_long(labels, "labels").numpy()
    return {"nmi": float(normalized_mutual_info_score(y, a)),
            "ari": float(adjusted_rand_score(y, a)),
            "purity": float(table.max(dim=1).values.sum()) / float(table.sum()),
            "clusters_used": int(table.shape[0])}


def kmeans_clustering_metrics(features, labels, k: int | None = None, *, seed: int = 0,
                              niter: int = 50, nredo: int = 3) -> dict[str, float]:
    """k-means (faiss; k = number of classes by default) on L2-normalised features, scored by
    NMI, ARI and purity against the labels.

    Euclidean k-means on unit-length features (as DeepCluster and PCL cluster), k-means++
    seeding; of ``nredo`` restarts the lowest k-means objective wins (labels are never used).
    """
    x = torch.from_numpy(as_float32_matrix(features, "features"))
    y = _as_long(labels, "labels")
    if y.numel() != x.shape[0]:
        raise UserError(f"{y.numel()} labels for {x.shape[0]} feature rows")
    if k is None:
        k = int(y.unique().numel())
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    _, assign, _ = kmeans(x, k, niter=niter, seed=seed, nredo=nredo, init="kmeans++")
    return {**assignment_metrics(assign, y), "k": int(k)}
