"""PNG pictures people look at: t-SNE map, cluster contact sheet, loss and kNN curves, bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def tsne_map(features: torch.Tensor, labels: torch.Tensor | None, path, *, class_names=None,
             max_points: int = 2000, seed: int = 0) -> Path:
    """2-D t-SNE (scikit-learn, cosine) of at most ``max_points`` features, coloured by class."""
    from sklearn.manifold import TSNE

    plt = _plt()
    g = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    pick = torch.randperm(n, generator=g)[:max_points].sort().values
    x = torch.nn.functional.normalize(features[pick].float(), dim=1).numpy()
    xy = TSNE(n_components=2, init="pca", random_state=seed, metric="cosine",
              perplexity=min(30.0, max(5.0, (len(x) - 1) / 3))).fit_transform(x)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    if labels is not None:
        y = labels[pick].numpy()
        cmap = plt.get_cmap("tab10" if y.max() < 10 else "tab20")
        for c in np.unique(y):
            m = y == c
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=5, color=cmap(int(c) % cmap.N), label=name)
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(x)} test features")
    return _save(fig, path)


def contact_sheet(images: torch.Tensor, assignments: torch.Tensor, path, *,
                  clusters: int = 10, per_cluster: int = 8, seed: int = 0) -> Path:
    """A grid: one row per cluster (the most used ``clusters``), ``per_cluster`` images each.

    ``images`` are uint8 (N, 3, H, W) or (N, H, W, 3).
    """
    plt = _plt()
    if images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.permute(0, 2, 3, 1)
    a = assignments.long().cpu()
    ids, counts = a.unique(return_counts=True)
    top = ids[counts.argsort(descending=True)][:clusters].tolist()
    g = torch.Generator().manual_seed(seed)
    rows = len(top)
    fig, axes = plt.subplots(rows, per_cluster, figsize=(per_cluster * 0.9, rows * 0.95),
                             squeeze=False)
    for r, cid in enumerate(top):
        members = (a == cid).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)][:per_cluster]
        for c in range(per_cluster):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(members):
                ax.imshow(images[members[c]].numpy())
        axes[r][0].set_title(f"#{cid} ({int((a == cid).sum())})", fontsize=6, loc="left")
    fig.suptitle("test images per cluster (largest clusters)", fontsize=9)
    return _save(fig, path)


def loss_curve(records: list[dict], path) -> Path:
    """Training loss (and ln K when logged) against iteration."""
    plt = _plt()
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in records], label="loss")
    if "ln_k" in records[-1]:
        ax.axhline(records[-1]["ln_k"], color="grey", ls="--", label="ln K (collapse)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    return _save(fig, path)


def knn_curves(curves: dict[str, list[tuple[int, float]]], path) -> Path:
    """kNN top-1 per epoch, one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, pts in curves.items():
        pts = sorted(dict(pts).items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 (k=20, T=0.07)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def metric_bars(finals: dict[str, dict[str, float | None]], path) -> Path:
    """Grouped bars: every headline metric for every method (random init included)."""
    plt = _plt()
    names = list(finals)
    metrics = [m for m in ("knn_k20", "knn_k200", "linear", "nmi")
               if any(finals[n].get(m) is not None for n in names)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.8))
    width = 0.8 / max(1, len(metrics))
    for i, m in enumerate(metrics):
        vals = [finals[n].get(m) or 0.0 for n in names]
        ax.bar(np.arange(len(names)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(names)) + width * (len(metrics) - 1) / 2)
    ax.set_xticklabels(names)
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=8, ncol=len(metrics))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
