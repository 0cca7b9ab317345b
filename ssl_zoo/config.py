"""Run configuration: typed dataclasses, merged from defaults, a file and ``--set`` overrides.

Every error names the field (``train.epochs: expected an integer, got 'ten'``) and is a
:class:`ssl_zoo.errors.ConfigError`, so the CLI prints it as one line. The conversion from plain
data and files (``from_dict``, ``to_dict``, ``load_config_file``) is :mod:`ssl_zoo.typed`'s,
re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ssl_zoo.data.views.spec import AUTO_ROLE, ROLES, CropGroup, ViewSpec
from ssl_zoo.errors import ConfigError, suggest
from ssl_zoo.preemption import DEFAULT_SIGNALS, signal_numbers
from ssl_zoo.typed import (  # noqa: F401  (to_dict, load_config_file: re-exported)
    from_dict,
    load_config_file,
    parse_assignment,
    set_at_path,
    to_dict,
)

OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
AMP_MODES = ("auto", "off", "bf16", "fp16")
LOGGERS = ("auto", "jsonl", "tensorboard")
VIEW_PLACES = ("auto", "workers", "step")
DECODERS = ("workers", "device")


@dataclass
class TrainConfig:
    """Trainer settings shared by every method."""

    epochs: int = 40
    """Passes over the training set (40: the demo job in about 4 minutes on 2 CPU cores)."""
    batch_size: int = 128
    """Images per optimiser step on each process (global batch = batch_size x processes)."""
    optimizer: str = "adam"
    """One of sgd, lars, adam, adamw (Adam learns fastest at small scale on CPU)."""
    lr_per_256: float = 2e-3
    """Peak learning rate for a global batch of 256; scaled linearly with the global batch."""
    weight_decay: float = 1e-6
    """Weight decay (not on norm parameters, biases, ViT position embeddings and tokens while
    exclude_norm_and_bias); with weight_decay_end, its value at the first iteration."""
    weight_decay_end: float | None = None
    """Weight decay at the last iteration, reached by a cosine from weight_decay (DINO: 0.04
    -> 0.4), set per iteration on the decayed parameters; null: constant weight_decay."""
    exclude_norm_and_bias: bool = True
    """Norm weights, biases, ViT position embeddings and class tokens get no weight decay and
    no LARS adaptation (SimCLR, BYOL, DINO); false: every parameter gets both (the official
    SwAV code's LARC)."""
    clip_grad_norm: float = 0.0
    """Clip the gradients' global L2 norm to this every step, after fp16 unscaling (DINO's
    ViTs: 3.0); 0: off. The norm stays on the device (logged as grad_norm on log steps)."""
    momentum: float = 0.9
    """SGD / LARS momentum (Adam beta1 is 0.9 regardless)."""
    lars_eta: float = 0.001
    """LARS trust coefficient (You et al. 2017)."""
    warmup_epochs: float = 1.0
    """Linear warm-up from 0 to the peak rate, then cosine decay, set per iteration."""
    final_lr_ratio: float = 0.0
    """Learning rate at the end of the cosine, as a fraction of the peak."""
    warmup_start_lr_ratio: float = 0.0
    """Learning rate of the first warm-up iteration, as a fraction of the peak; > 0: a linear
    ramp from it to the peak, as the official SwAV --start_warmup (0.3 / 4.8 = 0.0625)."""
    amp: str = "auto"
    """Mixed precision: auto (bf16 on CUDA, off on CPU), off, bf16, fp16 (CUDA only)."""
    seed: int = 0
    """Seeds data order, augmentations and initialisation; a seeded CPU run is repeatable."""
    device: str = "auto"
    """auto (cuda when present), cpu, cuda, cuda:N."""
    num_workers: int = 2
    """Loader worker processes for image folders (in-memory sources need none)."""
    decode: str = "workers"
    """Where folder images are decoded: workers (PIL in the loader workers, JPEGs at reduced
    size), device (the workers read the bytes, the training device decodes each batch's JPEGs
    with torchvision.io.decode_jpeg: nvJPEG on CUDA; other formats, CMYK and EXIF-rotated JPEGs
    are still decoded in the workers). Folders only; the crops are then made in the step."""
    views_in: str = "auto"
    """Where the crops are made: step (in the training step, on the device: the GPU path),
    workers (in the loader's worker processes, one thread each, as torchvision's per-image
    transforms run; in-process for in-memory data or 0 workers), auto (workers when the device
    is the CPU and a folder or prepared store is read with workers, else step). The same seed
    gives the same crops either way."""
    log_every_iters: int = 10
    """Write a metrics.jsonl line every this many iterations."""
    logger: str = "auto"
    """Where records go: jsonl (metrics.jsonl only), tensorboard (also event files in
    RUN_DIR/tb/; needs the tensorboard extra), auto (tensorboard when it is installed)."""
    checkpoint_every_iters: int = 0
    """Also checkpoint every this many iterations (0: at epoch ends only)."""
    checkpoint_every_minutes: float = 0.0
    """Also checkpoint when this many minutes have passed since the last checkpoint (0: off),
    so a hard kill loses at most about that much work; under DDP decided at log steps."""
    stop_signals: list[str] = field(default_factory=lambda: list(DEFAULT_SIGNALS))
    """Signals that stop the run cleanly: checkpoint, then exit with status 75 (resumable);
    on one process after the running step, under DDP at the next log step (empty: none)."""
    requeue: bool = False
    """Under SLURM: after a signal's checkpoint, requeue the job (``scontrol requeue
    $SLURM_JOB_ID``); restart it with ``--resume auto``."""
    eval_every_epochs: int = 0
    """kNN evaluation every this many epochs during training (0: only at the end)."""
    skip_nonfinite: int = 0
    """Skip up to this many steps with a non-finite loss before stopping (0: stop at once). A
    non-finite step is skipped on the device at once; the trainer learns of it at the next log
    step or checkpoint (at most log_every_iters later), and stops or warns there."""
    sync_bn: bool = False
    """Convert batch norm to SyncBatchNorm when distributed."""
    sync_bn_group_size: int = 0
    """Processes whose batches SyncBatchNorm normalises together (consecutive ranks; it must
    divide the number of processes); 0: all of them. The official SwAV 800-epoch run: 8."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0: no limit); for smoke tests."""
    compile: bool = False
    """Run the backbone and the method's heads through ``torch.compile`` (in place, so
    checkpoints keep their key names); the first steps of each crop size pay the compile."""
    channels_last: bool = True
    """On CUDA: model weights and crops in channels-last memory format (faster convolutions)."""
    cudnn_benchmark: bool = True
    """On CUDA: let cuDNN time its convolution algorithms for the (fixed) crop shapes."""
    tf32: bool = True
    """On CUDA: TF32 tensor cores for float32 matrix products and convolutions."""


@dataclass
class EvalConfig:
    """What runs at the end of training (and in ``ssl-zoo eval``)."""

    enabled: bool = True
    """Evaluate at the end of training."""
    knn: bool = True
    """Weighted kNN, both protocols (k=20, T=0.07 and k=200, T=0.1)."""
    linear: bool = True
    """Feature probe on frozen features (mini-batch logistic regression; evaluation/linear.py)."""
    linear_epochs: int = 30
    """Passes over the training features per probe fit (small data gets at least 1000 steps)."""
    linear_batch_size: int = 1024
    """Features per probe step."""
    clustering: bool = True
    """k-means on test features: NMI, ARI, purity."""
    pictures: bool = True
    """t-SNE map and cluster contact sheets as PNG."""
    baseline: bool = True
    """Also evaluate the same backbone at random initialisation (once per backbone/data)."""
    batch_size: int = 256
    """Images per forward pass when extracting features."""
    network: str = ""
    """Which of the method's networks is evaluated (periodic kNN, final evaluation, ``eval``)
    and exported: a key of ``Method.eval_networks()`` (``backbone``; DINO and BYOL also
    ``teacher`` / ``target``); "" = the method's ``default_eval_network``."""


@dataclass
class RunConfig:
    """Everything that defines a run; written to ``RUN_DIR/config.json`` before training."""

    method: str = "swav"
    dataset: str = "demo"
    backbone: str = "convnet"
    backbone_stem: str = "auto"
    """auto (CIFAR stem for images <= 64 px), imagenet or cifar (ResNets only)."""
    backbone_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``timm.create_model`` for a ``timm:NAME`` backbone
    (``--set backbone_args.patch_size=4``; values parsed as JSON: numbers, true, lists)."""
    image_size: int = 0
    """Working image size: folders are decoded to it, in-memory sources resized to it once
    when opened (0: the source's own size, or 64 for folders)."""
    data_root: str = ""
    download: bool = False
    skip_bad_images: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the method's own Config dataclass (validated against it)."""
    views: dict[str, Any] | None = None
    """A view spec overriding the method's default (groups of crops + normalisation)."""


# --------------------------------------------------------------------------------------------
# --set overrides and validation (the generic typed-dataclass machinery: ssl_zoo/typed.py)
# --------------------------------------------------------------------------------------------
def apply_override(data: dict[str, Any], assignment: str, method_fields: set[str]) -> None:
    """Apply one ``key=value`` to the plain config dict ``data`` (in place).

    Keys are dotted paths (``train.epochs``, ``method.num_prototypes``, ``views.groups.1.count``)
    or bare field names, which are looked up in the top level, then ``train``, ``eval`` and the
    method's config; a bare name found in more than one place must be qualified.
    """
    key, value = parse_assignment(assignment)
    parts = key.split(".")
    if parts[0] == "method" and len(parts) > 1:
        parts[0] = "method_config"
    if len(parts) == 1:
        homes = []
        top = {f.name for f in dataclasses.fields(RunConfig)} - {"train", "eval", "method_config",
                                                                 "views"}
        if key in top:
            homes.append([key])
        if key in {f.name for f in dataclasses.fields(TrainConfig)}:
            homes.append(["train", key])
        if key in method_fields:
            homes.append(["method_config", key])
        if not homes and key in {f.name for f in dataclasses.fields(EvalConfig)}:
            homes.append(["eval", key])  # eval fields are reached by bare name only when unique
        if not homes:
            every = top | {f.name for f in dataclasses.fields(TrainConfig)} | method_fields
            raise ConfigError(f"--set: {suggest(key, every, 'config field')}")
        if len(homes) > 1:
            options = ", ".join(".".join(h).replace("method_config", "method") for h in homes)
            raise ConfigError(f"--set {key}: ambiguous, write one of {options}")
        parts = homes[0]
    set_at_path(data, parts, value, key)


def validate_run_config(cfg: RunConfig) -> None:
    """Impossible values of the framework's own fields, each as a one-line ConfigError."""
    t = cfg.train
    checks = [
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.lr_per_256 > 0, "train.lr_per_256 must be > 0"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (t.weight_decay_end is None or t.weight_decay_end >= 0,
         "train.weight_decay_end must be >= 0 (or null: constant weight_decay)"),
        (t.clip_grad_norm >= 0, "train.clip_grad_norm must be >= 0 (0: off)"),
        (0 <= t.momentum < 1, "train.momentum must be in [0, 1)"),
        (t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (t.warmup_epochs <= t.epochs, "train.warmup_epochs must not exceed train.epochs"),
        (0 <= t.final_lr_ratio <= 1, "train.final_lr_ratio must be in [0, 1]"),
        (0 <= t.warmup_start_lr_ratio <= 1, "train.warmup_start_lr_ratio must be in [0, 1]"),
        (t.sync_bn_group_size >= 0, "train.sync_bn_group_size must be >= 0 (0: all processes)"),
        (t.num_workers >= 0, "train.num_workers must be >= 0"),
        (t.log_every_iters >= 1, "train.log_every_iters must be >= 1"),
        (t.checkpoint_every_iters >= 0, "train.checkpoint_every_iters must be >= 0"),
        (t.checkpoint_every_minutes >= 0, "train.checkpoint_every_minutes must be >= 0"),
        (t.eval_every_epochs >= 0, "train.eval_every_epochs must be >= 0"),
        (t.skip_nonfinite >= 0, "train.skip_nonfinite must be >= 0"),
        (t.max_steps >= 0, "train.max_steps must be >= 0"),
        (cfg.image_size >= 0, "image_size must be >= 0"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (cfg.eval.linear_epochs >= 1, "eval.linear_epochs must be >= 1"),
        (cfg.eval.linear_batch_size >= 1, "eval.linear_batch_size must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError("train.optimizer: " + suggest(t.optimizer, OPTIMIZERS, "optimizer"))
    if t.amp not in AMP_MODES:
        raise ConfigError("train.amp: " + suggest(t.amp, AMP_MODES, "mode"))
    if t.logger not in LOGGERS:
        raise ConfigError("train.logger: " + suggest(t.logger, LOGGERS, "logger"))
    if t.decode not in DECODERS:
        raise ConfigError("train.decode: " + suggest(t.decode, DECODERS, "place"))
    if t.decode == "device" and t.views_in == "workers":
        raise ConfigError("train.decode=device decodes in the training process: the crops are "
                          "made in the step there (train.views_in=step or auto)")
    if t.views_in not in VIEW_PLACES:
        raise ConfigError("train.views_in: " + suggest(t.views_in, VIEW_PLACES, "place"))
    if cfg.backbone_stem not in ("auto", "imagenet", "cifar"):
        raise ConfigError("backbone_stem must be auto, imagenet or cifar")
    for key in cfg.backbone_args:
        if not (isinstance(key, str) and key.isidentifier()):
            raise ConfigError(f"backbone_args: {key!r} is not a keyword argument name")
    if cfg.backbone_args and not cfg.backbone.startswith("timm:"):
        raise ConfigError(f"backbone_args: constructor arguments are for timm:NAME backbones "
                          f"only, not for {cfg.backbone}")
    try:
        signal_numbers(t.stop_signals)
    except ValueError as exc:
        raise ConfigError(f"train.stop_signals: {exc}") from None


def settle_roles(spec: ViewSpec) -> None:
    """Replace every ``auto`` role by the one it means (ViewSpec.group_roles), in place, so the
    effective config (config.json) names each group's role."""
    for g, role in zip(spec.groups, spec.group_roles()):
        g.role = role


def view_spec_from_dict(data: dict[str, Any]) -> ViewSpec:
    """A ViewSpec from plain data, validated field by field (``views.groups.0.size`` ...)."""
    data = dict(data)
    groups = data.pop("groups", None)
    spec = from_dict(ViewSpec, data, "views")
    if groups is not None:
        if not isinstance(groups, list) or not groups:
            raise ConfigError("views.groups: expected a non-empty list of crop groups")
        spec.groups = [from_dict(CropGroup, g, f"views.groups.{i}") for i, g in enumerate(groups)]
    return spec


def validate_view_spec(spec: ViewSpec, image_size: int) -> None:
    """Crop sizes, ranges and roles that cannot work, as one-line errors."""
    for i, g in enumerate(spec.groups):
        where = f"views.groups.{i}"
        if g.count < 1:
            raise ConfigError(f"{where}.count must be >= 1")
        if g.size < 1:
            raise ConfigError(f"{where}.size must be >= 1")
        if g.size > image_size:
            raise ConfigError(
                f"{where}.size: crop size {g.size} px is larger than the {image_size}-px images; "
                f"use at most {image_size} (or a larger --set image_size for folder sources)"
            )
        lo, hi = g.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"{where}.scale must satisfy 0 < min <= max <= 1, got {g.scale}")
        if not 0 < g.ratio[0] <= g.ratio[1]:
            raise ConfigError(f"{where}.ratio must satisfy 0 < min <= max, got {g.ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(g, name)
            if not 0 <= p <= 1:
                raise ConfigError(f"{where}.{name} must be a probability in [0, 1], got {p}")
        if g.role not in (*ROLES, AUTO_ROLE):
            raise ConfigError(f"{where}.role: " + suggest(str(g.role), (*ROLES, AUTO_ROLE),
                                                           "crop role"))
    if any(s <= 0 for s in spec.std):
        raise ConfigError("views.std must be positive")
