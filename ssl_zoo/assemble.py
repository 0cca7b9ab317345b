"""From what a user typed to one typed, validated run (docs/design.md, "Layers": assembly).

The only place that does this, for ``train``, ``eval``, ``compare`` and ``export``: config files
and ``--set`` overrides are merged, the method is looked up once, its typed config gets every
default filled in, the data source is opened (its image size and normalisation statistics), the
method's default view spec is built and the user's ``views.*`` overrides are applied on top of
it, and everything is validated. The result's ``config`` is the *effective* config: what
``config.json`` stores and what ``--resume`` compares and restores, so a default changed in
code after a run started never changes that run.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_zoo import registry
from ssl_zoo.backbones import build_backbone, check_input_sizes, resolve_stem
from ssl_zoo.config import (
    RunConfig,
    apply_override,
    settle_roles,
    validate_run_config,
    validate_view_spec,
    view_spec_from_dict,
)
from ssl_zoo.data.datasets import ImageDataset
from ssl_zoo.data.folders import run_canvas
from ssl_zoo.data.sources import DataSplits, open_source
from ssl_zoo.data.stats import IMAGENET, known_stats, source_stats
from ssl_zoo.data.views import ViewSpec
from ssl_zoo.errors import ConfigError, UserError
from ssl_zoo.evaluation.supervised import (
    Supervised,
    SupervisedConfig,
    balanced_fraction,
    listed_indices,
    protocol_defaults,
    read_label_list,
    subset,
)
from ssl_zoo.method import Method, MethodConfig
from ssl_zoo.typed import from_dict, load_config_file, to_dict

KNOWN_IMAGE_SIZES = {"demo": 32, "cifar10": 32, "cifar100": 32, "stl10": 96}
"""Image sizes of sources that can be told without opening them (for recipes and dry runs)."""


@dataclass
class Run:
    """A run ready to build: the effective config and the typed pieces it was resolved into."""

    config: RunConfig
    """Every field, the method's config complete with defaults and the full view spec."""
    method_cls: type[Method]
    method_config: MethodConfig
    view_spec: ViewSpec
    image_size: int
    data: DataSplits | None
    """The opened source (None when resolved without data)."""

    def build_method(self) -> Method:
        """The method with a freshly initialised backbone (seed torch first for a repeatable
        initialisation)."""
        c = self.config
        backbone, dim = build_backbone(c.backbone, stem=c.backbone_stem,
                                       image_size=self.image_size, args=c.backbone_args)
        return self.method_cls(backbone, dim, self.method_config)

    def summary(self) -> dict[str, Any]:
        """The effective config as plain data (what ``config.json`` holds)."""
        return to_dict(self.config)


# --------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------
def _set_key(assignment: str) -> str:
    return assignment.partition("=")[0].strip()


def merge_views(default: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (a file's or a saved config's ``views``) on top of the method's default spec.

    Fields are replaced one by one; ``groups`` in ``given`` decides how many groups there are,
    each merged onto the default group at its index (the last one beyond the default's). A full
    spec (a saved ``config.json``) therefore comes back unchanged.
    """
    out = copy.deepcopy(default)
    for key, value in given.items():
        if key == "groups" and isinstance(value, list) and isinstance(out.get("groups"), list):
            base = out["groups"]
            out["groups"] = [
                {**base[min(i, len(base) - 1)], **g} if isinstance(g, dict) else g
                for i, g in enumerate(value)]
        else:
            out[key] = value
    return out


def resolve(base: dict[str, Any] | None = None, sets: list[str] | tuple[str, ...] = (),
            method: str | None = None, *, open_data: bool | None = True,
            world_size: int | None = None) -> Run:
    """The effective run from a config dict (files, a saved ``config.json``), ``--set``
    overrides and the method name (``--method``; else the dict's, else ``--set method=``).

    With ``open_data=False`` the source is not opened: its image size must be known
    (``image_size`` or a fixed-size dataset) and its statistics are the known ones (or
    ImageNet's); recipes are validated this way. ``open_data=None`` opens it only when its
    image size is not known otherwise (``--dry-run``). ``world_size`` (default: the ``WORLD_SIZE``
    torchrun sets) gives the global batch the method's config is checked against.
    """
    view_sets = [s for s in sets if _set_key(s).startswith("views.") or _set_key(s) == "views"]
    cfg, cls, method_config, given_views = _typed_configs(base, sets, view_sets, method)
    splits, image_size, mean, std = _data_and_stats(cfg, open_data)
    spec = _view_spec(cls, method_config, image_size, mean, std, given_views, view_sets)
    # patch grids (ViTs): every crop size and the evaluation size, here rather than at a step
    check_input_sizes(cfg.backbone, {"image_size": image_size, **{
        f"views.groups.{i}.size": g.size for i, g in enumerate(spec.groups)}},
        stem=cfg.backbone_stem, image_size=image_size, args=cfg.backbone_args)
    cls.settle_config(method_config, spec)  # defaults taken from the spec (roles)
    cls.check_views(method_config, spec)
    if splits is not None:
        _fit_canvas(splits, run_canvas(cfg.canvas, spec, image_size))
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    method_config.validate(image_size, cfg.train.batch_size * world,
                           len(splits.train) if splits is not None else 0)

    cfg.image_size = image_size
    cfg.method_config = to_dict(method_config)
    cfg.views = to_dict(spec)
    run = Run(cfg, cls, method_config, spec, image_size, splits)
    _check_eval_network(run)
    return run


def _check_eval_network(run: Run) -> None:
    """``eval.network`` names one of the method's :meth:`~ssl_zoo.method.Method.eval_networks`
    (a one-line error listing them, before any work). The names come from the method built on
    PyTorch's meta device (no memory, no initialisation); a method that cannot be built there
    is checked when the trainer builds it."""
    name = run.config.eval.network
    if not name or name == run.method_cls.default_eval_network:
        return
    try:
        with torch.device("meta"):
            method = run.build_method()
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - checked again on the real method (Trainer, eval, export)
        return
    method.eval_network(name)


def _typed_configs(base: dict[str, Any] | None, sets: list[str] | tuple[str, ...],
                   view_sets: list[str], method: str | None
                   ) -> tuple[RunConfig, type[Method], MethodConfig, Any]:
    """The validated run config, the method class, its typed config and the given ``views``
    (applied later, on the method's default spec), from ``base`` and the non-view ``sets``."""
    data = json.loads(json.dumps(base or {}))  # a deep copy of plain data
    other_sets = [s for s in sets if s not in view_sets]
    for s in other_sets:
        if _set_key(s) == "method":
            method = s.partition("=")[2].strip()
    name = str(method or data.get("method") or RunConfig.method)
    data["method"] = name
    cls = registry.get_method(name)
    for key, value in cls.train_defaults.items():  # below files and --set (applied next)
        data.setdefault("train", {}).setdefault(key, value)
    fields = set(cls.config_fields())
    for s in other_sets:
        if _set_key(s) != "method":
            apply_override(data, s, fields)
    given_views = data.pop("views", None)
    method_data = data.pop("method_config", None) or {}
    cfg = from_dict(RunConfig, data)
    method_config = from_dict(cls.Config, method_data, "method")
    validate_run_config(cfg)
    return cfg, cls, method_config, given_views


def _data_and_stats(cfg: RunConfig, open_data: bool | None
                    ) -> tuple[DataSplits | None, int, Any, Any]:
    """The opened splits (or None), the image size and the normalisation mean and std: the
    source's own when it is opened, else the known ones (or ImageNet's)."""
    known_size = cfg.image_size or KNOWN_IMAGE_SIZES.get(cfg.dataset.partition(":")[0], 0)
    if open_data is None:
        open_data = not known_size
    splits = open_dataset(cfg) if open_data else None
    if splits is not None:
        image_size = splits.train.image_size
        mean, std = source_stats(cfg.dataset, splits.train)
    else:
        image_size = known_size
        if not image_size:
            raise ConfigError(f"image_size: the size of {cfg.dataset} is not known without "
                              "opening it; set image_size")
        mean, std = known_stats(cfg.dataset) or IMAGENET
    return splits, image_size, mean, std


def _view_spec(cls: type[Method], method_config: MethodConfig, image_size: int, mean: Any,
               std: Any, given_views: Any, view_sets: list[str]) -> ViewSpec:
    """The method's default view spec with the given ``views`` and the ``views.*`` sets on
    top, groups of count 0 left out, validated against the image size, ``auto`` roles settled
    (global: the groups of the largest size left)."""
    spec = cls.default_views(method_config, image_size)
    if not isinstance(spec, ViewSpec):
        raise UserError(f"{cls.__name__}.default_views returned {type(spec).__name__}, not a "
                        "ssl_zoo.data.views.ViewSpec")
    spec.mean, spec.std = tuple(mean), tuple(std)
    spec_data = {"views": to_dict(spec)}
    if given_views is not None:
        if not isinstance(given_views, dict):
            raise ConfigError("views: expected a mapping (groups, mean, std)")
        spec_data["views"] = merge_views(spec_data["views"], given_views)
    for s in view_sets:
        apply_override(spec_data, s, set())
    spec = view_spec_from_dict(spec_data["views"])
    _check_settings_of_groups_off(spec, view_sets)
    spec.groups = [g for g in spec.groups if g.count != 0]  # count 0 leaves a group out
    if not spec.groups:
        raise ConfigError("views.groups: every group has count 0; at least one crop is needed")
    validate_view_spec(spec, image_size)
    settle_roles(spec)
    return spec


def _fit_canvas(splits: DataSplits, side: int) -> None:
    """Every split of a source that decodes image files holds ``side``-px canvases (the
    crops' canvas, docs/design.md "Data flow"); a store of smaller ones says so, once."""
    notes = {ds.use_canvas(side) for ds in (splits.train, splits.eval_train, splits.test)
             if ds is not None}
    for note in sorted(n for n in notes if n):
        warnings.warn(note, stacklevel=3)


def _check_settings_of_groups_off(spec, view_sets: list[str]) -> None:
    """A ``--set views.groups.N.<field>`` on a group whose count is 0 would silently do nothing
    (the group is left out): say so instead (SwAV's 32-px local group is off by default)."""
    for s in view_sets:
        parts = _set_key(s).split(".")
        if len(parts) >= 4 and parts[1] == "groups" and parts[2].isdigit() and parts[3] != "count":
            i = int(parts[2])
            if i < len(spec.groups) and spec.groups[i].count == 0:
                raise ConfigError(f"{_set_key(s)}: group {i} has count 0 (off), so this setting "
                                  f"would do nothing; add --set views.groups.{i}.count=N")


def open_dataset(cfg: RunConfig) -> DataSplits:
    """The splits of the run's source, at its working size."""
    return open_source(cfg.dataset, data_root=cfg.data_root or None, download=cfg.download,
                       image_size=cfg.image_size or None, skip_bad_images=cfg.skip_bad_images)


def load_files(paths: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Config files (YAML or JSON) merged in order, later ones winning field by field."""
    out: dict[str, Any] = {}
    for path in paths:
        out = _merge_dicts(out, load_config_file(path))
    return out


def _merge_dicts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(out.get(k), dict) and isinstance(
            v, dict) and k != "views" else v
    return out


# --------------------------------------------------------------------------------------------
# existing runs
# --------------------------------------------------------------------------------------------
def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = ""
                       ) -> list[str]:
    """Fields whose value in ``current`` differs from ``saved``, as ``name (old -> new)``.

    Fields a saved config does not have (added to ssl-zoo after it was written) take their
    defaults and are not differences, so a newer ssl-zoo resumes an older run; lists of
    mappings of one length (``views.groups``) are compared item by item, field by field.
    """
    out = []
    for k in sorted(saved):
        if k not in current:
            continue
        va, vb = saved[k], current[k]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif _same_length_mappings(va, vb):
            for i, (a, b) in enumerate(zip(va, vb)):
                out += config_differences(a, b, f"{prefix}{k}.{i}.")
        elif va != vb and not _same_number_list(va, vb):
            out.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return out


def _same_length_mappings(a: Any, b: Any) -> bool:
    return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(isinstance(x, dict) for x in a + b))


def _same_number_list(a: Any, b: Any) -> bool:
    return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``config.json``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no config.json there; is it a run directory?")
    return json.loads(path.read_text())


def resume(run_dir: str | Path, sets: list[str] | tuple[str, ...] = (),
           open_data: bool | None = True) -> Run:
    """The run saved in ``run_dir``, with ``sets`` that may change nothing of what it was
    made with (a one-line error names the fields that differ)."""
    saved = saved_config(run_dir)
    saved.setdefault("canvas", "eval")  # runs made before `canvas` decoded at the eval size
    run = resolve(saved, sets, open_data=open_data)
    diff = config_differences(saved, run.summary())
    if diff:
        raise ConfigError(f"--resume {run_dir} was made with a different config: "
                          + ", ".join(diff))
    return run


def from_checkpoint(state: dict[str, Any], sets: list[str] | tuple[str, ...] = (), *,
                    open_data: bool | None = True) -> Run:
    """The run a training checkpoint was written by (``sets`` may point it at other data, or
    choose another ``eval.network``)."""
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise UserError("not an ssl-zoo training checkpoint")
    saved = json.loads(state["config"])
    saved.setdefault("canvas", "eval")  # as resume
    return resolve(saved, sets, open_data=open_data)


def for_weights(sets: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, DataSplits, ViewSpec]:
    """Config, opened data and normalisation to evaluate a weights file with no run behind it
    (``ssl-zoo eval --weights``): ImageNet's statistics (those every public ResNet release was
    trained with) unless ``views.mean`` / ``views.std`` are set."""
    data: dict[str, Any] = {"backbone_stem": "imagenet"}
    norm: dict[str, Any] = {"views": {"mean": list(IMAGENET[0]), "std": list(IMAGENET[1])}}
    for s in sets:
        apply_override(norm if _set_key(s).startswith("views.") else data, s, set())
    cfg = from_dict(RunConfig, data)
    validate_run_config(cfg)
    spec = ViewSpec(mean=tuple(norm["views"]["mean"]), std=tuple(norm["views"]["std"]))
    return cfg, open_dataset(cfg), spec


# --------------------------------------------------------------------------------------------
# the paper's supervised protocols
# --------------------------------------------------------------------------------------------
@dataclass
class ProtocolRun(Run):
    """A supervised protocol run (``ssl-zoo eval --protocol``): the trainer trains it as any
    run; its method is a :class:`~ssl_zoo.evaluation.supervised.Supervised` on a backbone that
    starts from ``backbone_state``, and ``data.train`` is the labelled training set."""

    backbone_state: dict[str, torch.Tensor] | None = None
    """The backbone's weights (CPU tensors) the run starts from."""
    labels: torch.Tensor | None = None
    """The labels of ``data.train``, by its index."""
    labelled_fraction: float = 1.0
    """The share of the split's labelled images the run trains on."""

    def build_method(self) -> Method:
        c = self.config
        backbone, dim = build_backbone(c.backbone, stem=c.backbone_stem,
                                       image_size=self.image_size, args=c.backbone_args)
        backbone.load_state_dict(self.backbone_state, strict=True)
        return Supervised(backbone, dim, self.method_config, self.labels)


def source_fields(cfg: RunConfig, image_size: int) -> dict[str, Any]:
    """What a protocol run takes from the run (or weights) it evaluates: its data source, its
    backbone with the stem it was built with, the seed, workers and evaluation batch."""
    return {"dataset": cfg.dataset, "data_root": cfg.data_root, "download": cfg.download,
            "skip_bad_images": cfg.skip_bad_images, "image_size": image_size,
            "backbone": cfg.backbone, "backbone_args": dict(cfg.backbone_args),
            "backbone_stem": resolve_stem(cfg.backbone_stem, image_size),
            "train": {"seed": cfg.train.seed, "num_workers": cfg.train.num_workers,
                      "device": cfg.train.device},
            "eval": {"batch_size": cfg.eval.batch_size}}


def _labelled_train(protocol: str, splits: DataSplits, cfg: RunConfig,
                    label_fraction: float | None, label_list: str | None
                    ) -> tuple[ImageDataset, float]:
    """The labelled training images a protocol trains on (all of them, or the subset the
    label options name) and their share of the split's labelled images."""
    labelled = splits.eval_train
    if labelled is None or labelled.labels is None or splits.test is None \
            or splits.test.labels is None:
        raise ConfigError(f"--protocol {protocol}: {cfg.dataset} needs labelled train and test "
                          "splits")
    if label_fraction is not None and label_list is not None:
        raise ConfigError("give --label-fraction or --label-list, not both")
    if protocol != "semisup":
        if label_fraction is not None or label_list is not None:
            raise ConfigError("--label-fraction and --label-list go with --protocol semisup")
        keep = (labelled.labels >= 0).nonzero().flatten()
        if keep.shape[0] == len(labelled):
            return labelled, 1.0
        return subset(labelled, keep), 1.0
    if label_list is not None:
        index = listed_indices(labelled, read_label_list(label_list), label_list)
    elif label_fraction is not None:
        index = balanced_fraction(labelled.labels, label_fraction, cfg.train.seed)
    else:
        raise ConfigError("--protocol semisup: say which labels, --label-fraction 0.01 (a "
                          "seeded class-balanced share) or --label-list FILE (file names)")
    n_labelled = int((labelled.labels >= 0).sum())
    return subset(labelled, index), index.shape[0] / max(1, n_labelled)


def for_protocol(protocol: str, source: dict[str, Any], backbone_state: dict[str, torch.Tensor],
                 mean: Any, std: Any, sets: list[str] | tuple[str, ...] = (), *,
                 label_fraction: float | None = None, label_list: str | None = None,
                 source_key: str = "") -> ProtocolRun:
    """The protocol run of ``protocol`` (``linear-paper``, ``semisup``) on the backbone
    weights ``backbone_state``: ``source`` (:func:`source_fields`) gives the data, backbone and
    seed, the protocol its recipe (:func:`~ssl_zoo.evaluation.supervised.protocol_defaults`),
    ``sets`` override any field (``dataset=`` for another dataset: its own image size then,
    unless ``image_size`` is set too; ``views.*`` the crops and normalisation). Assembled as a
    training run: typed, validated, data opened."""
    view_sets = [s for s in sets if _set_key(s).startswith("views.") or _set_key(s) == "views"]
    other = [s for s in sets if s not in view_sets]
    fields = {f for f in SupervisedConfig.__dataclass_fields__}
    data: dict[str, Any] = json.loads(json.dumps(source))
    data["method"] = protocol
    keys = {_set_key(s) for s in other}
    if "dataset" in keys and "image_size" not in keys:
        data["image_size"] = 0  # another dataset: its own size
    first = copy.deepcopy(data)
    for s in other:
        apply_override(first, s, fields)
    probe = from_dict(RunConfig, {k: v for k, v in first.items() if k != "method_config"})
    splits = open_dataset(probe)
    image_size = splits.train.image_size
    train, fraction = _labelled_train(protocol, splits, probe, label_fraction, label_list)
    data = _merge_dicts(data, protocol_defaults(protocol, image_size, len(train), fraction))
    for s in other:
        apply_override(data, s, fields)
    data.pop("views", None)
    method_data = data.pop("method_config", None) or {}
    classes = train.classes or splits.test.classes
    num_classes = len(classes) if classes else int(max(int(train.labels.max()),
                                                       int(splits.test.labels.max()))) + 1
    method_data.update(num_classes=num_classes, source=source_key)
    cfg = from_dict(RunConfig, data)
    method_config = from_dict(SupervisedConfig, method_data, "method")
    validate_run_config(cfg)
    spec = _view_spec(Supervised, method_config, image_size, mean, std, None, view_sets)
    Supervised.check_views(method_config, spec)
    method_config.validate(image_size, cfg.train.batch_size, len(train))
    cfg.image_size = image_size
    cfg.method_config = to_dict(method_config)
    cfg.views = to_dict(spec)
    return ProtocolRun(cfg, Supervised, method_config, spec, image_size,
                       DataSplits(train, None, splits.test), backbone_state=backbone_state,
                       labels=train.labels, labelled_fraction=fraction)


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` (this process's GPU), ``cuda:N``."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: CUDA was asked for but no GPU is available")
        if pref == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(pref)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {pref!r}") from None
