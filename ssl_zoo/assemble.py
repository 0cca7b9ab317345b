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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_zoo import registry
from ssl_zoo.backbones import build_backbone, check_input_sizes
from ssl_zoo.config import (
    RunConfig,
    apply_override,
    settle_roles,
    validate_run_config,
    validate_view_spec,
    view_spec_from_dict,
)
from ssl_zoo.data.sources import DataSplits, open_source
from ssl_zoo.data.stats import IMAGENET, known_stats, source_stats
from ssl_zoo.data.views import ViewSpec
from ssl_zoo.errors import ConfigError, UserError
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
    cls.check_views(method_config, spec)
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
    defaults and are not differences, so a newer ssl-zoo resumes an older run.
    """
    out = []
    for k in sorted(saved):
        if k not in current:
            continue
        va, vb = saved[k], current[k]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb and not _same_number_list(va, vb):
            out.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return out


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
