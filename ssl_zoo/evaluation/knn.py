"""Weighted k-nearest-neighbour classification of frozen features (InstDisc / DINO protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_zoo.evaluation.faiss_utils import inner_product_search

# name -> (k, temperature): DINO / solo-learn use k=20, T=0.07; InstDisc / lightly k=200, T=0.1
KNN_PROTOCOLS: dict[str, tuple[int, float]] = {"k20_t0.07": (20, 0.07), "k200_t0.1": (200, 0.1)}


def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
               k: int, temperature: float | None, num_classes: int,
               chunk_size: int = 8192) -> torch.Tensor:
    """Class scores (Q, C): the sum over the top-k cosine neighbours of exp(sim / T) per label.

    Features are L2-normalised; neighbours come from an exact faiss inner-product search.
    ``temperature=None`` gives every neighbour weight 1 (plain majority vote).
    """
    tr = F.normalize(train_feats.float(), dim=1)
    te = F.normalize(test_feats.float(), dim=1)
    sims, idx = inner_product_search(te, tr, k, chunk_size=chunk_size)
    weights = torch.ones_like(sims) if temperature is None else torch.exp(sims / temperature)
    labels = train_labels.long().cpu()[idx]  # (Q, k)
    scores = torch.zeros(te.shape[0], num_classes)
    scores.scatter_add_(1, labels, weights)
    return scores


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *, k: int,
                 temperature: float | None, num_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy of the weighted kNN classifier (k clamped to the train size)."""
    k_used = min(k, train_feats.shape[0])
    scores = knn_scores(train_feats, train_labels, test_feats, k_used, temperature, num_classes)
    top = scores.topk(min(5, num_classes), dim=1).indices
    y = test_labels.long().cpu().view(-1, 1)
    return {"top1": float((top[:, :1] == y).any(1).float().mean()),
            "top5": float((top == y).any(1).float().mean()), "k": k_used,
            "temperature": temperature}
