"""Backbone weights of any known layout, loaded strictly into one of our backbones.

Layouts read (found by their keys, never by the file name):

* plain torchvision state dicts (``conv1.weight``, ..., a classifier ``fc.*`` ignored) and our
  own exports (``ssl-zoo export``: the same names, no classifier);
* our training checkpoints (``{"model": ..., "config": ...}``: the method's ``backbone.*``);
* the official SwAV release (``module.`` prefix, ``module.projection_head.*`` and
  ``module.prototypes.*`` present and ignored) and other DataParallel / DDP files;
* PyTorch Lightning checkpoints of lightly and solo-learn (``{"state_dict": ...}`` with the
  backbone under a prefix such as ``backbone.`` or ``model.backbone.``; lightly's
  ``nn.Sequential(*list(resnet.children())[:-1])`` numbers the children: ``backbone.0.weight``
  is ``conv1.weight``, ``backbone.4.0.conv1.weight`` is ``layer1.0.conv1.weight``).

Matching is strict: every tensor the backbone expects must be found once, with its shape, under
one prefix; tensors under that prefix that the backbone does not have are an error unless they
are heads the backbone never holds (``fc``, ``projection_head``, ``prototypes``); tensors outside
the prefix belong to other modules (heads, momentum encoders) and are left alone. The file is
read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssl_zoo.backbones import build_backbone
from ssl_zoo.checkpoint import safe_load
from ssl_zoo.errors import CheckpointError, ConfigError

IGNORED_HEADS = ("fc.", "projection_head.", "prototypes.")
"""Sub-modules under the backbone's prefix that a backbone without a classifier never holds."""
OPTIONAL = ("num_batches_tracked",)
"""Buffers older files lack (BatchNorm's counter): kept at the module's value when absent."""
SHOWN = 3


def _tensors(obj, path: Path) -> dict[str, torch.Tensor]:
    """The flat name -> tensor dict inside a loaded file (checkpoint containers unwrapped)."""
    for key in ("state_dict", "model", "model_state", "network"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of tensor names, "
                              f"got {type(obj).__name__})")
    out = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(f"{path}: holds no tensors")
    return out


def _child_names(module: nn.Module) -> dict[str, str]:
    """'0' -> 'conv1', '1' -> 'bn1', ...: the names of a Sequential of the module's children."""
    return {str(i): name for i, (name, _) in enumerate(module.named_children())}


def _candidates(key: str, expected: set[str], children: dict[str, str]):
    """(prefix, backbone name) pairs a file key could stand for."""
    parts = key.split(".")
    for i in range(len(parts)):
        prefix, rest = ".".join(parts[:i]), parts[i:]
        prefix = prefix + "." if prefix else ""
        name = ".".join(rest)
        if name in expected:
            yield prefix, name
        elif rest[0] in children:
            mapped = ".".join([children[rest[0]], *rest[1:]])
            if mapped in expected:
                yield prefix + "#", mapped  # '#': children numbered as a Sequential


def match_state_dict(tensors: dict[str, torch.Tensor], backbone: nn.Module, *, source: str,
                     backbone_name: str) -> dict[str, torch.Tensor]:
    """The backbone's state dict found in ``tensors`` (module doc), or a one-line error."""
    target = backbone.state_dict()
    expected = set(target)
    children = _child_names(backbone)
    votes: dict[str, int] = {}
    for key in tensors:
        for prefix, _ in _candidates(key, expected, children):
            votes[prefix] = votes.get(prefix, 0) + 1
    if not votes:
        raise CheckpointError(
            f"{source}: no tensor matches {backbone_name} (file keys such as "
            f"{_few(tensors)}; expected keys such as {_few(target)}, optionally under a prefix "
            f"like 'module.' or 'backbone.')")
    prefix = max(votes, key=lambda p: (votes[p], -len(p)))
    numbered = prefix.endswith("#")
    real_prefix = prefix[:-1] if numbered else prefix
    found: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in tensors.items():
        if not key.startswith(real_prefix):
            continue  # another module of the file (heads, a momentum encoder, ...)
        rest = key[len(real_prefix):]
        if numbered and rest.split(".")[0] in children:
            first, _, tail = rest.partition(".")
            rest = f"{children[first]}.{tail}" if tail else children[first]
        if rest in expected:
            found[rest] = value
        elif not rest.startswith(IGNORED_HEADS):
            unexpected.append(key)
    missing = [k for k in target if k not in found and not k.endswith(OPTIONAL)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of {backbone_name} not found (e.g. "
                         f"{', '.join(real_prefix + k for k in missing[:SHOWN])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unmatched key(s) under {real_prefix or 'the top'!r}"
                         f" (e.g. {', '.join(unexpected[:SHOWN])})")
        raise CheckpointError(f"{source}: does not match --backbone {backbone_name}: "
                              + "; ".join(parts) + " - is it another architecture or stem?")
    for k, v in found.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise CheckpointError(f"{source}: {real_prefix}{k} has shape {tuple(v.shape)}, "
                                  f"{backbone_name} expects {tuple(target[k].shape)} (another "
                                  f"architecture, width or stem?)")
    for k in target:
        found.setdefault(k, target[k])
    return found


def _few(keys) -> str:
    keys = list(keys)
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def load_weights_into(backbone: nn.Module, path: str | Path, backbone_name: str) -> nn.Module:
    """Load the file at ``path`` (any layout of the module doc) into ``backbone``, strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    tensors = _tensors(safe_load(path), path)
    backbone.load_state_dict(match_state_dict(tensors, backbone, source=str(path),
                                              backbone_name=backbone_name), strict=True)
    return backbone


class BackboneOnly(nn.Module):
    """What the evaluation needs of a method, for weights with no method behind them."""

    default_eval_network = "backbone"

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def eval_network(self, name: str = "") -> nn.Module:
        """The weights' backbone: the only network there is."""
        if name not in ("", "backbone"):
            raise ConfigError(f"eval.network: {name!r}: a weights file has only its backbone "
                              "(choices: backbone)")
        return self.backbone

    def cluster_assignments(self, x: torch.Tensor) -> None:
        return None


def backbone_for_weights(path: str | Path, cfg, image_size: int) -> BackboneOnly:
    """``cfg.backbone`` (with ``cfg.backbone_stem``) holding the weights of ``path``."""
    backbone, _ = build_backbone(cfg.backbone, stem=cfg.backbone_stem, image_size=image_size)
    return BackboneOnly(load_weights_into(backbone, path, cfg.backbone))
