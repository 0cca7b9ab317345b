"""Backbones: torchvision ResNets (ImageNet or CIFAR stem), any torchvision classifier, any timm
model (``timm:NAME``; ViTs take every crop size), a ConvNet.

``build_backbone(name)`` returns ``(module, feature_dim)``; the module maps float (B, 3, H, W)
images to (B, feature_dim) features. Torchvision models keep torchvision's parameter names with
the final classifier replaced by ``nn.Identity`` (no weights are downloaded), so an exported
ResNet-18 loads with ``strict=True`` into ``torchvision.models.resnet18()`` whose ``fc`` is an
Identity (and, for the CIFAR stem, ``conv1`` a 3x3 stride-1 conv and ``maxpool`` an Identity;
``backbone_arch_info`` says exactly what to change).

Names: the ``BACKBONES`` table, ``NAME_wX`` for a ResNet or the ConvNet at X times the
channel widths (``resnet18_w0.25``: 16-32-64-128 channels), and any name of
``torchvision.models.list_models(module=torchvision.models)``.

``timm:NAME`` is any model of timm's registry (the optional extra ``vit``), built by
``ssl_zoo.timm_backbones`` (timm's own module and key names; ViTs take every crop size).
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import ResNet

from ssl_zoo.errors import ConfigError
from ssl_zoo.timm_backbones import (  # noqa: F401 (re-exported: the timm names stay importable here)
    TIMM_INSTALL_HINT,
    TIMM_PREFIX,
    build_timm,
    input_size_problem,
    timm_arch_info,
    timm_kwargs,
    timm_model_name,
)

STEMS = ("auto", "imagenet", "cifar")
CIFAR_STEM_MAX_SIZE = 64
"""``stem="auto"`` picks the CIFAR stem for images up to this many px."""
_WIDTH = re.compile(r"^(?P<base>.+)_w(?P<width>\d+(\.\d+)?|\.\d+)$")


class ConvNet(nn.Module):
    """Small fast CPU backbone: 4 x (conv3x3-BN-ReLU), widths 32-64-128-256 times ``width``,
    2x2 max-pool between, global average pool (the network of CALIBRATION.md)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        chans = [max(8, int(round(c * width))) for c in (32, 64, 128, 256)]
        layers: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


# --------------------------------------------------------------------------------------------
# ResNets
# --------------------------------------------------------------------------------------------
def resolve_stem(stem: str, image_size: int) -> str:
    """``imagenet`` or ``cifar``: ``auto`` is the CIFAR stem for images <= 64 px."""
    if stem == "auto":
        return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem not in STEMS:
        raise ConfigError(f"backbone_stem must be auto, imagenet or cifar, got {stem!r}")
    return stem


def _init_resnet(model: nn.Module) -> None:
    """He-normal (fan-out) convs, unit/zero norms: the initialisation torchvision ResNets use
    (He et al. 2015), re-applied after layers were rebuilt at another width."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _set_width(model: ResNet, width: float) -> None:
    """Rebuild ``model``'s stem and four stages with ``width`` times the channels (64-128-256-512
    for width 1), keeping torchvision's module names."""
    base = max(8, int(round(64 * width)))
    block = type(model.layer1[0])
    depths = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    model.inplanes = base
    model.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = model._norm_layer(base)
    for i, depth in enumerate(depths):
        setattr(model, f"layer{i + 1}",
                model._make_layer(block, base * 2 ** i, depth, stride=1 if i == 0 else 2))
    model.fc = nn.Linear(base * 8 * block.expansion, 1000)
    _init_resnet(model)


def _set_cifar_stem(model: ResNet) -> None:
    """3x3 stride-1 first conv and no max-pool (SimCLR App. B.9): 32-px images keep their
    resolution into the first stage."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1,
                            bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def _adapt_resnet(model: ResNet, stem: str, image_size: int, width: float) -> tuple[nn.Module, int]:
    if width != 1.0:
        _set_width(model, width)
    if resolve_stem(stem, image_size) == "cifar":
        _set_cifar_stem(model)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


# --------------------------------------------------------------------------------------------
# any torchvision classifier
# --------------------------------------------------------------------------------------------
_EXTRA_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
                 "inception_v3": {"aux_logits": False, "init_weights": True}}


def _replace_last(container: nn.Module) -> int | None:
    """Replace the last Linear (or 1x1 conv classifier, SqueezeNet) below ``container`` by an
    Identity; its input width, or None when there is none."""
    if isinstance(container, nn.Linear):
        return None  # handled by the caller (a bare attribute)
    for name, child in reversed(list(container.named_children())):
        if isinstance(child, nn.Linear) or (isinstance(child, nn.Conv2d)
                                            and child.kernel_size == (1, 1)):
            setattr(container, name, nn.Identity())
            return child.in_features if isinstance(child, nn.Linear) else child.in_channels
        if len(list(child.children())):
            dim = _replace_last(child)
            if dim is not None:
                return dim
    return None


def strip_classifier(model: nn.Module) -> int:
    """Replace a torchvision model's final classifier layer (``fc``, ``classifier[-1]``,
    ``head``, ``heads.head``) by Identity in place; returns the feature dimension."""
    for attr in ("fc", "classifier", "head", "heads"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Linear):
            setattr(model, attr, nn.Identity())
            return sub.in_features
        if isinstance(sub, nn.Module):
            dim = _replace_last(sub)
            if dim is not None:
                return dim
    raise ConfigError(f"cannot find the classifier of {type(model).__name__} to remove")


def torchvision_model_names() -> list[str]:
    """Every torchvision classification model name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision(name: str, stem: str, image_size: int, width: float) -> tuple[nn.Module, int]:
    kwargs: dict[str, Any] = dict(_EXTRA_KWARGS.get(name, {}))
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[-1])
        if image_size % patch:
            raise ConfigError(f"{name} needs an image size divisible by its {patch}-px patches, "
                              f"got {image_size} px")
        kwargs["image_size"] = image_size
    is_resnet = torchvision.models.get_model_builder(name).__module__.endswith(".resnet")
    if width != 1.0 and not is_resnet:
        raise ConfigError(f"a width multiplier (_w{width:g}) works for ResNets and the ConvNet "
                          f"only, not for {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    if isinstance(model, ResNet):
        return _adapt_resnet(model, stem, image_size, width)
    return model, strip_classifier(model)


# --------------------------------------------------------------------------------------------
# input sizes of patch-based models
# --------------------------------------------------------------------------------------------
def check_input_sizes(name: str, sizes: dict[str, int], *, stem: str = "auto",
                      image_size: int = 32, args: dict[str, Any] | None = None) -> None:
    """One-line ConfigError when backbone ``name`` cannot take one of ``sizes`` (``where ->
    px``: the crop groups and the evaluation size), checked on the meta device at resolve
    time instead of an assertion at the first step. Only patch-based models are built."""
    if timm_model_name(name) is None and not name.startswith("vit_"):
        return  # convolutional networks take any size
    with torch.device("meta"):
        module, _ = build_backbone(name, stem=stem, image_size=image_size, args=args)
    for where, size in sizes.items():
        problem = input_size_problem(module, size)
        if problem:
            raise ConfigError(f"{where}: {size}-px inputs do not fit backbone {name}: it "
                              f"{problem}")


# --------------------------------------------------------------------------------------------
# the table and the entry points
# --------------------------------------------------------------------------------------------
def _convnet_builder(width: float) -> Callable[..., tuple[nn.Module, int]]:
    def build(*, width: float = width, **_) -> tuple[nn.Module, int]:
        net = ConvNet(width)
        return net, net.out_dim

    return build


def _tv_builder(name: str, width: float = 1.0) -> Callable[..., tuple[nn.Module, int]]:
    def build(*, stem: str = "auto", image_size: int = 224, width: float = width, **_
              ) -> tuple[nn.Module, int]:
        return _torchvision(name, stem, image_size, width)

    return build


BACKBONES: dict[str, tuple[Callable[..., tuple[nn.Module, int]], str]] = {
    "convnet": (_convnet_builder(1.0),
                "small 4-layer ConvNet 32-64-128-256, 256-d features, fast on CPU"),
    "convnet_w0.5": (_convnet_builder(0.5), "the small ConvNet at half width, 128-d"),
    "resnet18": (_tv_builder("resnet18"),
                 "torchvision ResNet-18, 512-d; stem auto (CIFAR <= 64 px) / imagenet / cifar"),
    "resnet18_w0.25": (_tv_builder("resnet18", 0.25),
                       "ResNet-18 at quarter width (16-32-64-128), 128-d, for CPU runs"),
    "resnet18_w0.5": (_tv_builder("resnet18", 0.5), "ResNet-18 at half width, 256-d"),
    "resnet34": (_tv_builder("resnet34"), "torchvision ResNet-34, 512-d; stem as ResNet-18"),
    "resnet50": (_tv_builder("resnet50"), "torchvision ResNet-50, 2048-d; stem as ResNet-18"),
}
"""Name -> (builder, one-line description). Also accepted: NAME_wX for any ResNet or the
ConvNet, and every torchvision classification model name."""


def _resolve(name: str) -> tuple[Callable[..., tuple[nn.Module, int]], dict[str, Any]]:
    """The builder of ``name`` and the keyword arguments its name implies."""
    if name in BACKBONES:
        return BACKBONES[name][0], {}
    tv = torchvision_model_names()
    m = _WIDTH.match(name)
    if m and (m["base"] == "convnet" or m["base"] in tv):
        width = float(m["width"])
        if not 0 < width <= 16:
            raise ConfigError(f"backbone {name!r}: width multiplier must be in (0, 16]")
        if m["base"] == "convnet":
            return _convnet_builder(width), {}
        return _tv_builder(m["base"], width), {}
    if name in tv:
        return _tv_builder(name), {}
    close = difflib.get_close_matches(name, sorted(set(BACKBONES) | set(tv)), n=3, cutoff=0.5)
    msg = f"unknown backbone {name!r}"
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    raise ConfigError(msg + f" (available: {', '.join(BACKBONES)}, NAME_wX for a ResNet or the "
                      "ConvNet at X times the width, any torchvision classification model, or "
                      "timm:NAME for a timm model; see `ssl-zoo list`)")


def build_backbone(name: str, *, stem: str = "auto", image_size: int = 32,
                   args: dict[str, Any] | None = None, **kw: Any) -> tuple[nn.Module, int]:
    """The backbone ``name`` (randomly initialised) and its feature dimension.

    ``stem`` and ``image_size`` choose the ResNet stem (ignored by other models, except that a
    torchvision ViT is built for ``image_size``); ``args`` (the run's ``backbone_args``) go to
    ``timm.create_model`` for ``timm:NAME``; ``kw`` goes to the builder (e.g. ``width=0.5``).
    """
    if stem not in STEMS:
        raise ConfigError(f"backbone_stem must be auto, imagenet or cifar, got {stem!r}")
    model = timm_model_name(name)
    if model is not None:
        return build_timm(model, args)
    if args:
        raise ConfigError(f"backbone_args {args}: constructor arguments are for timm:NAME "
                          f"backbones only, not for {name}")
    builder, implied = _resolve(name)
    return builder(stem=stem, image_size=image_size, **{**implied, **kw})


def backbone_arch_info(name: str, *, stem: str = "auto", image_size: int = 32,
                       args: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilding ``name`` needs later (saved next to exported weights): the arguments
    of ``build_backbone``, the resolved stem, the feature dimension and, for torchvision and
    timm models, how to get the same module from torchvision or timm alone."""
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        try:
            module, dim = build_backbone(name, stem=stem, image_size=image_size, args=args)
        except NotImplementedError:  # builders that compute with real tensors (RegNet)
            module = None
    if module is None:
        module, dim = build_backbone(name, stem=stem, image_size=image_size, args=args)
    info: dict[str, Any] = {"backbone": name, "backbone_stem": stem, "image_size": image_size,
                            "backbone_args": dict(args or {}), "feature_dim": int(dim),
                            "class": type(module).__name__}
    model = timm_model_name(name)
    if model is not None:
        info.update(timm_arch_info(model, module, args))
    elif isinstance(module, ResNet):
        resolved = resolve_stem(stem, image_size)
        info["backbone_stem_resolved"] = resolved
        base = _WIDTH.match(name)
        tv_name = base["base"] if base else name
        steps = [f"model = torchvision.models.{tv_name}()"]
        if base and float(base["width"]) != 1.0:
            steps = [f"(width {base['width']}: not a stock torchvision model; rebuild with "
                     f"ssl_zoo.backbones.build_backbone({name!r}, stem={resolved!r}))"]
        else:
            if resolved == "cifar":
                steps += ["model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)",
                          "model.maxpool = torch.nn.Identity()"]
            steps += ["model.fc = torch.nn.Identity()"]
        info["torchvision_recipe"] = steps
    elif name in torchvision_model_names():
        info["torchvision_recipe"] = [f"model = torchvision.models.{name}() with its final "
                                      "classifier layer replaced by torch.nn.Identity()"]
    return info
