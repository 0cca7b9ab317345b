"""PNG pictures people look at: t-SNE map, cluster contact sheet, loss and kNN curves, bars.

matplotlib with the Agg backend only (no window is ever opened); every function writes one PNG
to the path it is given (parent folders are created) and returns that path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ssl_zoo.errors import UserError

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _class_colours(plt, n: int):
    if n <= 10:
        cmap = plt.get_cmap("tab10")
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = plt.get_cmap("tab20")
        return [cmap(i) for i in range(n)]
    cmap = plt.get_cmap("turbo")
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def tsne_embedding(features, *, seed: int = 0, max_iter: int = 500) -> np.ndarray:
    """2-D t-SNE (van der Maaten and Hinton 2008; scikit-learn) of L2-normalised features.

    Features are first reduced to at most 50 dimensions by PCA (the usual t-SNE preprocessing);
    perplexity is 30, or less for very few points.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = _numpy(features).astype(np.float64)
    n = x.shape[0]
    if x.ndim != 2 or n < 4:
        raise UserError(f"t-SNE needs at least 4 feature rows, got shape {tuple(x.shape)}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dims = min(50, x.shape[1], n)
    if dims < x.shape[1]:
        x = PCA(dims, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity,
                max_iter=max(250, max_iter)).fit_transform(x)


def tsne_map(features, labels, path, *, class_names: Sequence[str] | None = None,
             max_points: int = 2000, seed: int = 0, max_iter: int = 500,
             title: str | None = None) -> Path:
    """t-SNE map of at most ``max_points`` features (a seeded random subset), one colour per
    class, with a legend (up to 20 classes; more get colours only)."""
    plt = _plt()
    feats = _numpy(features)
    n = feats.shape[0]
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:max_points])
    xy = tsne_embedding(feats[pick], seed=seed, max_iter=max_iter)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    if labels is not None:
        y = _numpy(labels).reshape(-1)
        if y.shape[0] != n:
            raise UserError(f"t-SNE map: {y.shape[0]} labels for {n} features")
        y = y[pick]
        classes = np.unique(y)
        colours = _class_colours(plt, len(classes))
        for i, c in enumerate(classes):
            m = y == c
            name = (class_names[int(c)] if class_names is not None and 0 <= c < len(class_names)
                    else str(c))
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=colours[i], label=name, linewidths=0)
        if len(classes) <= 20:
            ax.legend(markerscale=2.5, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                      frameon=False)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(pick)} test features")
    return _save(fig, path)


def _to_nhwc(images) -> np.ndarray:
    """uint8 images (N, C, H, W) or (N, H, W, C), C in {1, 3, 4}, as (N, H, W, C)."""
    x = _numpy(images)
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(f"contact sheet needs a batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = x.transpose(0, 2, 3, 1)
    elif x.shape[-1] not in (1, 3, 4):
        raise UserError(f"images must have 1, 3 or 4 channels first or last, got shape "
                        f"{tuple(x.shape)}")
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    return x


def contact_sheet(images, assignments, path, *, clusters: int = 10, per_cluster: int = 8,
                  cluster_ids: Sequence[int] | None = None, seed: int = 0,
                  title: str | None = None) -> Path:
    """A grid with one row per cluster and ``per_cluster`` randomly drawn member images each.

    Rows are ``cluster_ids`` if given, else the ``clusters`` largest clusters; each row is
    labelled with the cluster id and its size. ``images`` are uint8 NCHW or NHWC.
    """
    plt = _plt()
    imgs = _to_nhwc(images)
    a = _numpy(assignments).reshape(-1).astype(np.int64)
    if a.shape[0] != imgs.shape[0]:
        raise UserError(f"contact sheet: {a.shape[0]} assignments for {imgs.shape[0]} images")
    ids, counts = np.unique(a, return_counts=True)
    size = dict(zip(ids.tolist(), counts.tolist()))
    if cluster_ids is None:
        order = np.lexsort((ids, -counts))  # largest first, then by id
        rows = ids[order][:clusters].tolist()
    else:
        rows = [int(c) for c in cluster_ids]
    if not rows:
        raise UserError("contact sheet: no clusters to show")
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(rows), per_cluster,
                             figsize=(per_cluster * 0.8 + 0.6, len(rows) * 0.8 + 0.35),
                             squeeze=False, gridspec_kw=dict(wspace=0.05, hspace=0.08))
    gray = imgs.shape[-1] == 1
    for r, cid in enumerate(rows):
        members = np.flatnonzero(a == cid)
        members = np.sort(rng.permutation(members)[:per_cluster])
        for c in range(per_cluster):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(members):
                img = imgs[members[c]]
                ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None,
                          vmin=0, vmax=255)
        axes[r][0].set_ylabel(f"#{cid}\n({size.get(cid, 0)})", fontsize=7, rotation=0,
                              ha="right", va="center")
    top = axes[0][0].get_position().y1
    if title is None:
        title = "images per cluster" + (" (largest clusters)" if cluster_ids is None else "")
    fig.suptitle(title, fontsize=9, y=top + 0.25 / fig.get_figheight())
    return _save(fig, path)


def loss_curve(records: Sequence[Mapping], path, *, keys: Sequence[str] = ("loss",),
               title: str | None = None) -> Path:
    """Training curves from metric dicts (``metrics.jsonl`` rows) against ``step`` (or row
    number); a dashed line at ln K when the rows log ``ln_k`` (SwAV's collapse level)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = 0
    for key in keys:
        pts = [(r.get("step", i), r[key]) for i, r in enumerate(records)
               if r.get(key) is not None and math.isfinite(float(r[key]))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
            drawn += 1
    if not drawn:  # a diverged run still gets its picture, saying why it is empty
        ax.text(0.5, 0.5, f"no finite {', '.join(keys)} in {len(records)} rows",
                ha="center", va="center", transform=ax.transAxes)
    ln_k = next((r["ln_k"] for r in reversed(records) if r.get("ln_k") is not None), None)
    if ln_k is not None:
        ax.axhline(float(ln_k), color="grey", ls="--", lw=1, label="ln K (collapse)")
    ax.set_xlabel("iteration" if any("step" in r for r in records) else "logged row")
    ax.set_ylabel(keys[0] if len(keys) == 1 else "value")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(frameon=False)
    return _save(fig, path)


def knn_bands(curves: Mapping[str, Sequence[tuple[float, float, float, float]]], path, *,
              xlabel: str, ylabel: str = "kNN top-1 (k=20, T=0.07)",
              floor: float | None = None) -> Path:
    """One line per method through (x, mean) with a shaded band from min to max (over seeds;
    no band where they are equal); ``floor`` draws the random-init level."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, pts in curves.items():
        pts = sorted((float(x), float(m), float(lo), float(hi)) for x, m, lo, hi in pts)
        xs = [p[0] for p in pts]
        (line,) = ax.plot(xs, [p[1] for p in pts], marker="o", ms=3, label=name)
        if any(p[3] > p[2] for p in pts):
            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts],
                            color=line.get_color(), alpha=0.2, lw=0)
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", lw=1, label="random init")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(curves) > 5:  # many lines: the legend beside the axes, where it covers none
        ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def metric_bars(finals: Mapping[str, Mapping[str, float | None]], path, *,
                metrics: Sequence[str] | None = None,
                ranges: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> Path:
    """Grouped bars: each metric for each method (a missing value draws no bar), value on top.

    ``metrics`` defaults to those of (knn_k20, knn_k200, linear, nmi) that any method has;
    ``ranges`` (method -> metric -> (low, high), e.g. min and max over seeds) draws whiskers.
    """
    plt = _plt()
    names = list(finals)
    if not names:
        raise UserError("metric bars: no methods")
    if metrics is None:
        metrics = [m for m in ("knn_k20", "knn_k200", "linear", "nmi")
                   if any(finals[n].get(m) is not None for n in names)]
        if not metrics:
            metrics = sorted({m for n in names for m, v in finals[n].items() if v is not None})
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.8))
    width = 0.8 / max(1, len(metrics))
    for i, m in enumerate(metrics):
        xs = [j + i * width for j, n in enumerate(names) if finals[n].get(m) is not None]
        vals = [float(finals[n][m]) for n in names if finals[n].get(m) is not None]
        err = None
        if ranges:
            spans = [(ranges.get(n) or {}).get(m) for n in names if finals[n].get(m) is not None]
            if any(sp is not None for sp in spans):
                err = np.array([[v - sp[0], sp[1] - v] if sp else [0.0, 0.0]
                                for v, sp in zip(vals, spans)]).T.clip(min=0)
        bars = ax.bar(xs, vals, width, label=m, yerr=err, capsize=2 if err is not None else 0)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=6, padding=1)
    ax.set_xticks(np.arange(len(names)) + width * (len(metrics) - 1) / 2)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.legend(frameon=False, fontsize=8, ncol=max(1, len(metrics)), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
