"""The paper's supervised protocols as a module the trainer trains (docs/design.md, "Layers").

The linear protocol of SwAV (Caron et al. 2020, Sec. 4.1, official ``eval_linear.py``) trains a
linear layer on the frozen backbone's pooled features of RandomResizedCrop + flip crops; the
semi-supervised one (Sec. 4.1, Table 2, official ``eval_semisup.py``) fine-tunes the backbone
and a new linear layer on 1% or 10% of the labels. Both are short supervised runs of our own
trainer: :class:`Supervised` is a :class:`~ssl_zoo.method.Method` whose step is the
cross-entropy of the labels it looks up by dataset index, so AMP, DDP, exact resume,
checkpoints and the progress bar are the trainer's. Also here: the protocols' crops, the
labelled subsets (a seeded class-balanced fraction, or a list of file names) and the test
top-1 of the centre-crop view.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.datasets import ImageDataset
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.views import CropGroup, Views, ViewSpec, eval_view
from ssl_zoo.errors import ConfigError, DataError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext

SHOWN = 3
"""Missing file names a label-list error shows."""


@dataclass
class SupervisedConfig(MethodConfig):
    """A linear classifier on a backbone, trained on labels (the paper's protocols)."""

    num_classes: int = 0
    """Classes of the labelled training set (set from the data)."""
    freeze_backbone: bool = True
    """True: the backbone is frozen and kept in eval mode (batch-norm statistics fixed), only
    the linear layer learns (linear protocol); False: the whole network is fine-tuned
    (semi-supervised protocol)."""
    head_init_std: float = 0.01
    """The linear layer's weights ~ N(0, std^2), bias 0 (the official ``RegLog``); 0: torch's
    default initialisation of ``nn.Linear`` (the official semi-supervised head)."""
    source: str = ""
    """Where the backbone's weights came from (checkpoint or weights file, with its step): a
    protocol run resumes only on the same weights."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"method.num_classes: a classifier needs at least 2 classes, got "
                              f"{self.num_classes}")
        if self.head_init_std < 0:
            raise ConfigError("method.head_init_std must be >= 0 (0: torch's default)")


def protocol_crops(image_size: int, mean, std) -> ViewSpec:
    """One RandomResizedCrop(``image_size``, scale (0.08, 1)) + horizontal flip per image,
    nothing else (the training transform of the official ``eval_linear.py`` and
    ``eval_semisup.py``), normalised with ``mean`` and ``std``."""
    group = CropGroup(count=1, size=image_size, scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0,
                      brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0,
                      blur_p=0.0, solarize_p=0.0)
    return ViewSpec(groups=[group], mean=tuple(mean), std=tuple(std))


class Supervised(Method):
    """Cross-entropy of a linear layer on the backbone's pooled features, labels looked up by
    the batch's dataset index in ``labels`` (a non-persistent buffer: it comes from the data,
    not from the checkpoint)."""

    name = "supervised"
    description = "linear layer on a backbone, trained on labels (paper protocols)"
    Config = SupervisedConfig

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SupervisedConfig,
                 labels: torch.Tensor):
        super().__init__(backbone, feature_dim, config)
        self.head = nn.Linear(feature_dim, config.num_classes)
        if config.head_init_std > 0:
            nn.init.normal_(self.head.weight, mean=0.0, std=config.head_init_std)
            nn.init.zeros_(self.head.bias)
        self.register_buffer("labels", labels.long().clone(), persistent=False)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @classmethod
    def default_views(cls, config: SupervisedConfig, image_size: int) -> ViewSpec:
        return protocol_crops(image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @classmethod
    def check_views(cls, config: SupervisedConfig, spec: ViewSpec) -> None:
        if spec.num_crops != 1:
            raise ConfigError(f"views: the supervised protocols train on one crop per image, "
                              f"got {spec.num_crops}")

    def train(self, mode: bool = True) -> Supervised:
        """As ``nn.Module.train``, but a frozen backbone stays in eval mode (the official
        linear protocol's ``model.eval()``)."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of normalised images (no gradient through a frozen backbone)."""
        if self.config.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return self.head(feats)

    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        y = self.labels[views.index]
        logits = self.logits(views[0]).float()
        loss = F.cross_entropy(logits, y)
        top1 = (logits.detach().argmax(1) == y).float().mean()
        return StepOutput(loss, {"train_top1": top1})


# --------------------------------------------------------------------------------------------
# labelled subsets
# --------------------------------------------------------------------------------------------
def balanced_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``round(fraction * n_c)`` (at least 1) images of each class c, drawn
    without replacement by a permutation seeded with ``seed``; unlabelled images (-1) are never
    drawn. A class-balanced subset as SimCLR's published 1% / 10% ImageNet lists are."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--label-fraction: expected a fraction in (0, 1], got {fraction:g}")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(labels.shape[0], generator=g)
    picked = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = order[labels[order] == c]  # class c in the seeded order
        take = max(1, int(round(fraction * members.shape[0])))
        picked.append(members[:take])
    if not picked:
        raise DataError("--label-fraction: the training split has no labelled images")
    return torch.sort(torch.cat(picked)).values


def read_label_list(path: str | Path) -> list[str]:
    """File names, one per line (SimCLR's ``imagenet_subsets/1percent.txt`` format; blank
    lines and surrounding spaces ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--label-list: no such file {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"--label-list: {path} names no images")
    return names


def listed_indices(dataset: ImageDataset, names: list[str], where: str) -> torch.Tensor:
    """Sorted indices of the images of ``dataset`` whose file names are ``names`` (a name may
    carry folders, ``n01440764/n01440764_10026.JPEG``: its last part is matched); a name the
    dataset lacks is a one-line error naming a few."""
    files = getattr(dataset, "files", None)
    if files is None:
        raise ConfigError(f"--label-list: {dataset.name} has no file names (it is not a folder: "
                          "source); use --label-fraction")
    by_name: dict[str, int] = {}
    for i, f in enumerate(files):
        by_name.setdefault(Path(f).name, i)
    wanted = [Path(n).name for n in names]
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise DataError(f"--label-list {where}: {len(missing)} of {len(wanted)} images are not "
                        f"in {dataset.name} (e.g. {', '.join(missing[:SHOWN])})")
    return torch.tensor(sorted({by_name[n] for n in wanted}), dtype=torch.long)


def subset(dataset: ImageDataset, index: torch.Tensor) -> ImageDataset:
    """The images ``index`` of ``dataset`` as a dataset of their own (labels with them):
    in-memory images, image folders and prepared stores."""
    out = copy.copy(dataset)
    idx = index.long()
    if hasattr(dataset, "images"):  # TensorImages
        out.images = dataset.images[idx].contiguous()
    elif hasattr(dataset, "files"):  # FolderImages
        out.files = [dataset.files[i] for i in idx.tolist()]
        out.bad_while_decoding = {}
        out.skipped_at_open = 0
    elif hasattr(dataset, "rows"):  # PreparedImages
        out.rows = dataset.rows[idx.numpy()]
    else:
        raise DataError(f"{dataset.name}: cannot take a labelled subset of this source")
    out.labels = dataset.labels[idx] if dataset.labels is not None else None
    out.name = f"{dataset.name}[{idx.shape[0]} labelled]"
    return out


# --------------------------------------------------------------------------------------------
# test accuracy
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def classifier_accuracy(model: Supervised, dataset: ImageDataset, image_size: int, spec: ViewSpec,
                  device: torch.device, batch_size: int, num_workers: int = 0,
                  autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 and top-5 (percent) of ``model`` on every image of ``dataset``, each seen through
    the centre-crop evaluation view (Resize + CenterCrop, :func:`eval_view`), in eval mode."""
    was = model.training
    model.eval()
    labels = dataset.labels
    hit1 = hit5 = seen = 0
    loader = BatchLoader(dataset, batch_size, shuffle=False, drop_last=False,
                         num_workers=num_workers)
    try:
        for images, index, sizes in loader.iterate():
            images = images.to(device, non_blocking=True)
            sizes = sizes.to(device) if sizes is not None else None
            x = eval_view(images, image_size, spec.mean, spec.std, sizes=sizes)
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                scores = model.logits(x).float()
            y = labels[index].to(device)
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices
            hit1 += int((top[:, 0] == y).sum())
            hit5 += int((top == y[:, None]).any(1).sum())
            seen += int(y.shape[0])
    finally:
        loader.close()
        model.train(was)
    return {"top1": 100.0 * hit1 / max(seen, 1), "top5": 100.0 * hit5 / max(seen, 1),
            "n": seen}


# --------------------------------------------------------------------------------------------
# the protocols' recipes
# --------------------------------------------------------------------------------------------
PROTOCOLS = ("linear-paper", "semisup")
"""The supervised protocols ``ssl-zoo eval --protocol`` runs with the trainer."""
PAPER_SIZE = 128
"""Images of at least this many px get the official schedules; smaller ones (CIFAR-size, CPU
runs) a short one."""
SMALL_LINEAR_EPOCHS = 20
"""Epochs of the linear protocol on small images (the official 100 on larger ones)."""
ONE_PERCENT_BELOW = 0.05
"""A labelled fraction below this gets the official 1% rates, others the 10% ones."""


def protocol_defaults(protocol: str, image_size: int, n_labelled: int,
                      labelled_fraction: float) -> dict:
    """The run-config fields (``train.*``, ``method.*``) of ``protocol`` for a labelled
    training set of ``n_labelled`` images (``labelled_fraction`` of the split), before the
    user's ``--set``.

    linear-paper (official ``eval_linear.py``): SGD momentum 0.9, lr 0.3 at a batch of 256
    (scaled with the global batch), weight decay 1e-6 on every parameter, cosine to 0 without
    warm-up, 100 epochs (20 on images under :data:`PAPER_SIZE` px), batch 256; the head
    N(0, 0.01). No batch norm before the layer: the official one has it only without global
    pooling, and its default pools. semisup (official ``eval_semisup.py`` and its README's two
    commands): SGD momentum 0.9, no weight decay, 20 epochs, rate x0.2 at epochs 12 and 16,
    backbone lr 0.01 and head 0.2 (10% of the labels) or 0.02 and 5 (1%), batch 256,
    synchronised batch norm under DDP, the head as torch initialises it.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: unknown protocol {protocol!r} (one of features, "
                          + ", ".join(PROTOCOLS) + ")")
    batch = min(256, n_labelled)
    train = {"optimizer": "sgd", "momentum": 0.9, "batch_size": batch, "warmup_epochs": 0.0,
             "final_lr_ratio": 0.0, "eval_every_epochs": 1, "exclude_norm_and_bias": False}
    if protocol == "linear-paper":
        train.update(epochs=100 if image_size >= PAPER_SIZE else SMALL_LINEAR_EPOCHS,
                     lr_per_256=0.3, weight_decay=1e-6, lr_schedule="cosine")
        method = {"freeze_backbone": True, "head_init_std": 0.01}
    else:
        one_percent = labelled_fraction < ONE_PERCENT_BELOW
        trunk, head = (0.02, 5.0) if one_percent else (0.01, 0.2)
        train.update(epochs=20, lr_per_256=trunk, weight_decay=0.0, lr_schedule="step",
                     lr_decay_epochs=[12, 16], lr_decay_gamma=0.2,
                     lr_scale={"head.": head / trunk}, sync_bn=True)
        method = {"freeze_backbone": False, "head_init_std": 0.0}
    return {"train": train, "method_config": method}


def protocol_text(protocol: str, cfg, global_batch: int, n_labelled: int) -> str:
    """One line naming the recipe a protocol run used (what every number carries)."""
    t = cfg.train
    lr = t.lr_per_256 * global_batch / 256
    if protocol == "linear-paper":
        return (f"linear layer on frozen pooled features, RandomResizedCrop+flip crops each "
                f"epoch, SGD momentum {t.momentum:g}, lr {lr:g} (batch {global_batch}), wd "
                f"{t.weight_decay:g}, {t.lr_schedule}, {t.epochs} epochs, {n_labelled} labelled "
                "images; test: centre crop, full test split")
    head = lr * next(iter(t.lr_scale.values()), 1.0)
    return (f"fine-tune backbone + linear layer on {n_labelled} labelled images, "
            f"RandomResizedCrop+flip, SGD momentum {t.momentum:g}, lr {lr:g} backbone / {head:g} "
            f"head (batch {global_batch}), wd {t.weight_decay:g}, {t.lr_schedule} x"
            f"{t.lr_decay_gamma:g} at epochs {t.lr_decay_epochs}, {t.epochs} epochs; test: "
            "centre crop, full test split")
