"""Reading evaluation results (``eval.json``): one accessor for every headline number."""

from __future__ import annotations

from typing import Any

KNN_PROTOCOL_TEXT = {
    "k20_t0.07": "weighted kNN, k=20, T=0.07, cosine (DINO / solo-learn)",
    "k200_t0.1": "weighted kNN, k=200, T=0.1, cosine (InstDisc / lightly)",
}
"""The two kNN protocols every evaluation reports."""

HEADLINE_PATHS: dict[str, tuple[str, ...]] = {
    "knn_k20": ("knn", "k20_t0.07", "top1"),
    "knn_k200": ("knn", "k200_t0.1", "top1"),
    "linear": ("linear", "test_top1"),
    "nmi": ("clustering", "nmi"),
    "rankme": ("rankme", "rank"),
}
"""Where each headline number sits in an evaluation result."""

HEADLINE_LABELS = {"knn_k20": "kNN k=20 T=0.07", "knn_k200": "kNN k=200 T=0.1",
                   "linear": "linear", "nmi": "NMI", "rankme": "RankMe (effective rank)"}


def metric(result: dict[str, Any] | None, name: str) -> float | None:
    """Headline number ``name`` (a key of :data:`HEADLINE_PATHS`) of a result, or None."""
    node: Any = result or {}
    for key in HEADLINE_PATHS[name]:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def headline(result: dict[str, Any] | None) -> dict[str, float | None]:
    """Every headline number of a result (None where it was not evaluated)."""
    return {name: metric(result, name) for name in HEADLINE_PATHS}
