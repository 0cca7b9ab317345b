"""Backbones: torchvision ResNets (ImageNet or CIFAR stem), any torchvision model, a small ConvNet.

Every builder returns ``(module, feature_dim)``; the module maps float (B, 3, H, W) images to
(B, feature_dim) features. ResNets keep torchvision's parameter names (``fc`` is an Identity), so
an exported backbone loads into ``torchvision.models.resnetXX()`` with ``fc = nn.Identity()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from ssl_zoo.errors import ConfigError, suggest


class ConvNet(nn.Module):
    """Small fast CPU backbone: 4 x (conv3x3-BN-ReLU) widths 32-64-128-256, max-pool between,
    global average pool; 256-d features (the CALIBRATION.md network) times ``width``."""

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


def _resolve_stem(stem: str, image_size: int) -> str:
    if stem == "auto":
        return "cifar" if image_size <= 64 else "imagenet"
    if stem not in ("imagenet", "cifar"):
        raise ConfigError(f"backbone_stem must be auto, imagenet or cifar, got {stem!r}")
    return stem


def _resnet(depth: int) -> Callable[..., tuple[nn.Module, int]]:
    def build(stem: str = "auto", image_size: int = 224, **_) -> tuple[nn.Module, int]:
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if _resolve_stem(stem, image_size) == "cifar":
            # CIFAR stem (SimCLR App. B.9): 3x3 stride-1 first conv and no max-pool
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, dim

    return build


def _convnet(width: float = 1.0) -> Callable[..., tuple[nn.Module, int]]:
    def build(**_) -> tuple[nn.Module, int]:
        net = ConvNet(width)
        return net, net.out_dim

    return build


def _strip_classifier(model: nn.Module) -> int:
    """Replace the final classification Linear by Identity in place; returns its in_features."""
    for attr in ("fc", "classifier", "head", "heads"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Linear):
            setattr(model, attr, nn.Identity())
            return sub.in_features
        if isinstance(sub, nn.Sequential):
            for i in range(len(sub) - 1, -1, -1):
                if isinstance(sub[i], nn.Linear):
                    dim = sub[i].in_features
                    sub[i] = nn.Identity()
                    return dim
                if isinstance(sub[i], nn.Sequential):  # e.g. ViT heads.head
                    continue
            for name, child in sub.named_children():
                if isinstance(child, nn.Linear):
                    setattr(sub, name, nn.Identity())
                    return child.in_features
    raise ConfigError(f"cannot find the classifier of {type(model).__name__} to remove")


def _torchvision_any(name: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(**_) -> tuple[nn.Module, int]:
        model = torchvision.models.get_model(name, weights=None)
        return model, _strip_classifier(model)

    return build


BACKBONES: dict[str, tuple[Callable[..., tuple[nn.Module, int]], str]] = {
    "convnet": (_convnet(1.0), "small 4-layer ConvNet (32-64-128-256, 256-d), fast on CPU"),
    "convnet_w0.5": (_convnet(0.5), "the small ConvNet at half width (128-d)"),
    "resnet18": (_resnet(18), "torchvision ResNet-18 (512-d); stem auto/imagenet/cifar"),
    "resnet34": (_resnet(34), "torchvision ResNet-34 (512-d); stem auto/imagenet/cifar"),
    "resnet50": (_resnet(50), "torchvision ResNet-50 (2048-d); stem auto/imagenet/cifar"),
}


def torchvision_model_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_backbone(name: str, *, stem: str = "auto", image_size: int = 32
                   ) -> tuple[nn.Module, int]:
    """The backbone ``name`` and its feature dimension; any torchvision classifier works too."""
    if name in BACKBONES:
        return BACKBONES[name][0](stem=stem, image_size=image_size)
    if name in torchvision_model_names():
        return _torchvision_any(name)()
    raise ConfigError(suggest(name, list(BACKBONES), "backbone")
                      + "; any torchvision classification model name also works")
