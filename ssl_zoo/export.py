"""Export a run's evaluated network (the backbone, or the method's ``eval.network``) with plain
torchvision (or timm) key names, and load it back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_zoo.backbones import backbone_arch_info, build_backbone
from ssl_zoo.checkpoint import atomic_torch_save, load_latest_checkpoint, safe_load
from ssl_zoo.errors import UserError

PREFIX = "backbone."


def backbone_state_dict(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's entries of a method state_dict, without ``module.``/``backbone.`` prefixes."""
    out = {}
    for key, value in model_state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = value
    return out


def export_backbone(run_dir: str | Path, out: str | Path,
                    network: Callable[[dict[str, Any]], tuple[str, dict[str, torch.Tensor]]]
                    | None = None) -> Path:
    """Write the evaluated network's state_dict of ``run_dir``'s newest checkpoint to ``out``.

    ``out`` holds only tensors under torchvision's names (no heads, no ``fc``): load it with
    ``m = torchvision.models.resnet50(); m.fc = nn.Identity(); m.load_state_dict(sd)`` (strict);
    a ``timm:NAME`` backbone's under timm's, for ``timm.create_model(NAME, num_classes=0,
    **backbone_args)``. ``out.json`` records the architecture (and that recipe) so
    :func:`load_backbone` can rebuild the module.

    ``network(checkpoint)`` gives (name, state_dict) of the network to export (the method's
    ``eval.network``, rebuilt from the checkpoint by the caller: see ``ssl-zoo export``);
    without it, the backbone's entries of the checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    state, _ = load_latest_checkpoint(run_dir)
    cfg = json.loads(state["config"])
    name, sd = network(state) if network is not None else ("backbone", None)
    backbone_keys = set(backbone_state_dict(state["model"]))
    if sd is None:
        sd = backbone_state_dict(state["model"])
    if not sd:
        raise UserError(f"{run_dir}: the checkpoint has no backbone weights")
    if set(sd) != backbone_keys:
        raise UserError(f"{run_dir}: network {name!r} of {cfg['method']} does not have the "
                        "backbone's architecture (other state_dict keys), so it cannot be "
                        "exported as one; choose another with --set eval.network=NAME")
    out = Path(out)
    atomic_torch_save(sd, out)
    meta = {"backbone": cfg["backbone"], "backbone_stem": cfg.get("backbone_stem", "auto"),
            "backbone_args": cfg.get("backbone_args") or {},
            "image_size": _image_size(cfg, run_dir), "method": cfg["method"],
            "network": name, "step": int(state["step"]), "source_run": str(run_dir)}
    if meta["backbone"].startswith("timm:"):  # how to get the same module from timm alone
        info = backbone_arch_info(meta["backbone"], image_size=meta["image_size"],
                                  args=meta["backbone_args"])
        meta.update({k: info[k] for k in ("timm_model", "timm_kwargs", "timm_recipe")})
    Path(f"{out}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _image_size(cfg: dict, run_dir: Path) -> int:
    info = run_dir / "run_info.json"
    if info.is_file():
        return int(json.loads(info.read_text())["image_size"])
    return int(cfg.get("image_size") or 32)


def load_backbone(path: str | Path) -> nn.Module:
    """The backbone module of an exported file (architecture from ``path.json``), in eval mode."""
    path = Path(path)
    meta_path = Path(f"{path}.json")
    if not meta_path.is_file():
        raise UserError(f"{meta_path} not found: it records the architecture of {path}")
    meta = json.loads(meta_path.read_text())
    module, _ = build_backbone(meta["backbone"], stem=meta.get("backbone_stem", "auto"),
                               image_size=int(meta.get("image_size", 32)),
                               args=meta.get("backbone_args") or None)
    module.load_state_dict(safe_load(path), strict=True)
    return module.eval()
