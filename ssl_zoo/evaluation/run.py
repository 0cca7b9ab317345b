"""Evaluation of a trained backbone: kNN (two protocols), linear probe, clustering, pictures.

Used at the end of every training run, by ``ssl-zoo eval`` and by ``ssl-zoo compare``. Every
number is written with its protocol; the same backbone at random initialisation is evaluated
once per (backbone, dataset, image size, seed) and cached, so each result has its floor beside it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ssl_zoo.backbones import build_backbone
from ssl_zoo.config import RunConfig
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.views import eval_view
from ssl_zoo.evaluation import plots
from ssl_zoo.evaluation.clustering import assignment_metrics, kmeans_clustering_metrics
from ssl_zoo.evaluation.features import cache_root, cached_features
from ssl_zoo.evaluation.knn import knn_protocols
from ssl_zoo.evaluation.linear import linear_probe
from ssl_zoo.evaluation.rank import effective_rank_report
from ssl_zoo.evaluation.results import KNN_PROTOCOL_TEXT


def _labels(ds) -> torch.Tensor | None:
    y = getattr(ds, "labels", None)
    if y is None or (y < 0).all():
        return None
    return y


def _num_classes(*ys) -> int:
    return int(max(int(y.max()) for y in ys if y is not None)) + 1


def _features(encoder, data, view_spec, device, batch_size, cache_dir, dataset_name,
              console=None):
    common = dict(image_size=data.train.image_size, mean=view_spec.mean, std=view_spec.std,
                  device=device, batch_size=batch_size, console=console)
    key = {"dataset": dataset_name, "mean": list(view_spec.mean), "std": list(view_spec.std)}
    train_ds = data.eval_train or data.train
    ftr = cached_features(encoder, train_ds, key={**key, "split": "train"}, cache_dir=cache_dir,
                          description="features (train)", **common)
    fte = (cached_features(encoder, data.test, key={**key, "split": "test"}, cache_dir=cache_dir,
                           description="features (test)", **common)
           if data.test is not None else None)
    return train_ds, ftr, fte


def knn_both(ftr, ytr, fte, yte) -> dict[str, dict[str, float]]:
    """Both kNN protocols (k=20, T=0.07 and k=200, T=0.1) from one neighbour search."""
    return knn_protocols(ftr, ytr, fte, yte, num_classes=_num_classes(ytr, yte))


@torch.no_grad()
def quick_knn(backbone, data, view_spec, device, batch_size) -> dict[str, float]:
    """kNN top-1 (k=20, T=0.07) during training; features are not cached (weights change)."""
    if data.test is None or _labels(data.test) is None:
        return {}
    train_ds, ftr, fte = _features(backbone, data, view_spec, device, batch_size, None, "")
    ytr, yte = _labels(train_ds), _labels(data.test)
    if ytr is None:
        return {}
    res = knn_both(ftr, ytr, fte, yte)["k20_t0.07"]
    return {"knn_top1": res["top1"], "knn_top5": res["top5"]}


def _random_init_baseline(cfg: RunConfig, data, view_spec, device, console) -> dict[str, Any]:
    """kNN, linear and NMI of the same backbone at random initialisation (cached on disk)."""
    key = {"backbone": cfg.backbone, "stem": cfg.backbone_stem, "dataset": cfg.dataset,
           **({"backbone_args": cfg.backbone_args} if cfg.backbone_args else {}),
           "image_size": data.train.image_size, "seed": cfg.train.seed,
           "n_train": len(data.eval_train or data.train),
           "n_test": len(data.test) if data.test is not None else 0,
           "mean": list(view_spec.mean), "std": list(view_spec.std), "linear": cfg.eval.linear,
           "linear_epochs": cfg.eval.linear_epochs,
           "linear_batch_size": cfg.eval.linear_batch_size, "v": 3}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "baselines" / f"{digest}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    if console is not None:
        console.print("[dim]evaluating the random-initialisation baseline (once per backbone "
                      "and dataset)...[/]")
    torch.manual_seed(cfg.train.seed)
    backbone, _ = build_backbone(cfg.backbone, stem=cfg.backbone_stem,
                                 image_size=data.train.image_size, args=cfg.backbone_args)
    backbone.to(device)
    res = _metrics(backbone, data, view_spec, device, cfg, cache_dir=None, console=console)
    res["key"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    return res


def _metrics(encoder, data, view_spec, device, cfg: RunConfig, cache_dir,
             console=None) -> dict[str, Any]:
    train_ds, ftr, fte = _features(encoder, data, view_spec, device, cfg.eval.batch_size,
                                   cache_dir, cfg.dataset, console)
    ytr = _labels(train_ds)
    yte = _labels(data.test) if data.test is not None else None
    out: dict[str, Any] = {"n_train": int(ftr.shape[0]),
                           "n_test": int(fte.shape[0]) if fte is not None else 0,
                           "feature_dim": int(ftr.shape[1])}
    out["rankme"] = effective_rank_report(ftr)  # label-free: computed with or without labels
    if fte is None or ytr is None or yte is None:
        out["note"] = "no labelled test split: kNN, linear probe and NMI need labels"
        return out
    if cfg.eval.knn:
        out["knn"] = knn_both(ftr, ytr, fte, yte)
    if cfg.eval.linear:
        out["linear"] = linear_probe(ftr, ytr, fte, yte, seed=cfg.train.seed, device=device,
                                     epochs=cfg.eval.linear_epochs,
                                     batch_size=cfg.eval.linear_batch_size, console=console)
    if cfg.eval.clustering:
        out["clustering"] = kmeans_clustering_metrics(fte, yte, _num_classes(ytr, yte),
                                                      seed=cfg.train.seed)
    return out


@torch.no_grad()
def _method_clusters(method, data, view_spec, device, batch_size) -> torch.Tensor | None:
    if data.test is None:
        return None
    was = method.training
    method.eval()
    out = []
    try:
        for images, _, sizes in BatchLoader(data.test, batch_size, shuffle=False,
                                            drop_last=False).iterate():
            sizes = sizes.to(device) if sizes is not None else None
            x = eval_view(images.to(device), data.train.image_size, view_spec.mean, view_spec.std,
                          sizes=sizes)
            a = method.cluster_assignments(x)
            if a is None:
                return None
            out.append(a.cpu())
    finally:
        method.train(was)
    return torch.cat(out)


def evaluate_backbone(method, data, view_spec, device, cfg: RunConfig, *, out_dir: Path,
                      checkpoint_key: str = "", console=None, eval_name: str = "eval",
                      show=None) -> dict[str, Any]:
    """Evaluate the method's evaluated network (``eval.network``, default
    :attr:`~ssl_zoo.method.Method.default_eval_network`: the backbone unless the method says
    otherwise) and the method's clusters; write JSON and pictures.

    ``console`` receives progress notes, ``show`` the result (the caller's printing)."""
    out_dir = Path(out_dir)
    result: dict[str, Any] = {
        "dataset": cfg.dataset, "backbone": cfg.backbone, "method": cfg.method,
        "image_size": data.train.image_size,
        "protocols": {**KNN_PROTOCOL_TEXT,
                      "linear": "see linear.recipe", "rankme": "see rankme.protocol",
                      "clustering": "k-means (faiss) on test "
                      "features, k = number of classes; NMI, ARI, purity"},
        "checkpoint": checkpoint_key,
    }
    result["network"] = cfg.eval.network or method.default_eval_network
    result.update(_metrics(method.eval_network(cfg.eval.network), data, view_spec, device, cfg,
                           cache_dir=out_dir / "features", console=console))
    yte = _labels(data.test) if data.test is not None else None
    assignments = _method_clusters(method, data, view_spec, device, cfg.eval.batch_size)
    if assignments is not None and yte is not None:
        result["method_clusters"] = assignment_metrics(assignments, yte)
    if cfg.eval.baseline:
        result["random_init"] = _random_init_baseline(cfg, data, view_spec, device, console)
    if cfg.eval.pictures:
        result["pictures"] = _pictures(method, data, view_spec, device, cfg, out_dir,
                                       assignments)
    (out_dir / f"{eval_name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if show is not None:
        show(result)
    return result


def _pictures(method, data, view_spec, device, cfg, out_dir: Path, assignments) -> list[str]:
    paths = []
    feats_dir = out_dir / "features"
    _, _, fte = _features(method.eval_network(cfg.eval.network), data, view_spec, device,
                          cfg.eval.batch_size, feats_dir, cfg.dataset)
    yte = _labels(data.test) if data.test is not None else None
    classes = getattr(data.test, "classes", None) if data.test is not None else None
    if fte is not None:
        paths.append(plots.tsne_map(fte, yte, out_dir / "tsne.png", class_names=classes,
                                    seed=cfg.train.seed))
    if assignments is not None and data.test is not None:
        images = data.test.load(torch.arange(len(data.test)))
        paths.append(plots.contact_sheet(images, assignments, out_dir / "clusters.png"))
    metrics_file = out_dir / "metrics.jsonl"
    if metrics_file.is_file():
        records = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
        records = [r for r in records if "loss" in r]
        if records:
            paths.append(plots.loss_curve(records, out_dir / "loss.png"))
    return [str(p) for p in paths]


class RunEvaluation:
    """The trainer's evaluation callback for one run: kNN during training, everything at the
    end (written to ``RUN_DIR/eval.json`` with its pictures)."""

    def __init__(self, data, view_spec, cfg: RunConfig, run_dir: str | Path, console=None,
                 show=None):
        self.data, self.view_spec, self.cfg = data, view_spec, cfg
        self.run_dir = Path(run_dir)
        self.console, self.show = console, show

    def periodic(self, network, device) -> dict[str, float]:
        """kNN of ``network`` (the method's evaluated network) during training."""
        return quick_knn(network, self.data, self.view_spec, device, self.cfg.eval.batch_size)

    def final(self, method, device, step: int) -> dict[str, Any]:
        return evaluate_backbone(
            method, self.data, self.view_spec, device, self.cfg, out_dir=self.run_dir,
            checkpoint_key=f"{self.run_dir.resolve()}@{step}", console=self.console,
            show=self.show)
