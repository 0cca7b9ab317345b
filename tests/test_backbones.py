"""Backbones: feature dimensions, stems, torchvision compatibility of the weights, names."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from ssl_zoo.backbones import (
    BACKBONES,
    ConvNet,
    backbone_arch_info,
    build_backbone,
    torchvision_model_names,
)
from ssl_zoo.errors import ConfigError


@pytest.mark.parametrize("name, stem, size, dim, meta", [
    ("convnet", "auto", 32, 256, False), ("convnet_w0.5", "auto", 32, 128, False),
    ("convnet_w2", "auto", 16, 512, True), ("resnet18", "cifar", 32, 512, False),
    ("resnet18", "imagenet", 64, 512, True), ("resnet18_w0.25", "auto", 32, 128, False),
    ("resnet34", "auto", 32, 512, True), ("resnet50", "auto", 32, 2048, True),
])
def test_feature_dims(name, stem, size, dim, meta):
    with torch.device("meta" if meta else "cpu"), torch.no_grad():  # meta: shapes only
        net, d = build_backbone(name, stem=stem, image_size=size)
        out = net(torch.randn(2, 3, size, size))
    assert d == dim and out.shape == (2, dim)


def test_convnet_is_the_calibration_network():
    net = ConvNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 4


def _stem_out(net, x):
    return net.maxpool(net.relu(net.bn1(net.conv1(x))))


def test_stems_and_auto():
    x = torch.randn(1, 3, 32, 32)
    cifar, _ = build_backbone("resnet18", stem="cifar", image_size=32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert _stem_out(cifar, x).shape[-2:] == (32, 32)  # full resolution into layer1
    imagenet, _ = build_backbone("resnet18", stem="imagenet", image_size=32)
    assert imagenet.conv1.kernel_size == (7, 7) and _stem_out(imagenet, x).shape[-2:] == (8, 8)
    assert build_backbone("resnet18", image_size=64)[0].conv1.kernel_size == (3, 3)
    assert build_backbone("resnet18", image_size=96)[0].conv1.kernel_size == (7, 7)
    with pytest.raises(ConfigError, match="backbone_stem must be"):
        build_backbone("resnet18", stem="tiny")


def _recipe_model(info):
    scope = {"torch": torch, "torchvision": torchvision}
    for line in info["torchvision_recipe"]:
        exec(line, scope)  # noqa: S102 - our own recipe text
    return scope["model"]


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_weights_load_strictly_into_torchvision(stem):
    """The exported state dict is plain torchvision (recipe from backbone_arch_info)."""
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", stem=stem, image_size=32)
    ref = _recipe_model(backbone_arch_info("resnet18", stem=stem, image_size=32))
    ref.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(x), net.eval()(x))


def test_resnet50_keys_and_shapes_match_torchvision():
    with torch.device("meta"):
        net, dim = build_backbone("resnet50", stem="cifar", image_size=32)
        info = backbone_arch_info("resnet50", stem="cifar", image_size=32)
        ref = _recipe_model(info)
        ref.load_state_dict(net.state_dict(), strict=True)  # checks names and shapes
        assert ref(torch.empty(1, 3, 32, 32)).shape == (1, dim) == (1, info["feature_dim"])


def test_narrow_resnet():
    net, dim = build_backbone("resnet18_w0.25", stem="cifar", image_size=32)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    widths = [net.conv1.out_channels] + [getattr(net, f"layer{i}")[-1].conv2.out_channels
                                         for i in range(1, 5)]
    assert widths == [16, 16, 32, 64, 128] and dim == 128
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    w = net.layer3[0].conv1.weight  # He normal, fan-out: std = sqrt(2 / (out * k * k))
    assert abs(w.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.1
    assert torch.equal(net.layer3[0].bn1.weight, torch.ones(64))
    plain = torchvision.models.resnet18()
    assert {k for k in net.state_dict()} == {k for k in plain.state_dict() if
                                             not k.startswith("fc.")}
    with torch.device("meta"):
        big, dim50 = build_backbone("resnet50_w0.5", image_size=32)
        assert dim50 == 1024 and big(torch.empty(2, 3, 32, 32)).shape == (2, 1024)
    assert big.layer4[-1].conv3.out_channels == 1024 and big.conv1.out_channels == 32


@pytest.mark.parametrize("name, size", [
    ("mobilenet_v3_small", 64),  # classifier Sequential, last Linear
    ("squeezenet1_1", 64),  # 1x1 conv classifier
    ("densenet121", 64),  # classifier Linear
    ("vit_b_16", 32),  # heads.head, built for the image size
    ("swin_t", 64),  # head Linear
    ("googlenet", 64),  # no auxiliary outputs
    ("resnext50_32x4d", 32),  # a ResNet: gets the CIFAR stem
])
def test_any_torchvision_model(name, size):
    with torch.device("meta"):  # shapes only; nothing allocated
        net, dim = build_backbone(name, image_size=size)
        out = net.eval()(torch.empty(2, 3, size, size))
    assert out.shape == (2, dim)
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in net.modules())


def test_a_torchvision_model_runs_for_real():
    torch.manual_seed(0)
    net, dim = build_backbone("shufflenet_v2_x0_5", image_size=64)
    out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim) == (2, 1024) and torch.isfinite(out).all()


@torch.no_grad()
def test_every_torchvision_classifier():
    for name in torchvision_model_names():
        size = 299 if name == "inception_v3" else 224
        try:
            with torch.device("meta"):
                net, dim = build_backbone(name, image_size=size)
                out = net.eval()(torch.empty(1, 3, size, size))
        except NotImplementedError:  # RegNet computes widths with real tensors
            if not name.endswith(("400mf", "800mf")):
                continue  # the large RegNets take GBs to build for real; the small ones tell
            size = 64  # built for real: a small input (a RegNet's head pools any size)
            net, dim = build_backbone(name, image_size=size)
            out = net.eval()(torch.randn(1, 3, size, size))
        assert out.shape == (1, dim), name


def test_unknown_names_and_bad_widths():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_backbone("resnet81")
    with pytest.raises(ConfigError, match="did you mean 'vit_b_16'"):
        build_backbone("vit_b16")
    with pytest.raises(ConfigError, match="width multiplier must be in"):
        build_backbone("convnet_w0")
    with pytest.raises(ConfigError, match="ResNets and the ConvNet only"):
        build_backbone("swin_t_w0.5")
    with pytest.raises(ConfigError, match="divisible by its 16-px patches"):
        build_backbone("vit_b_16", image_size=40)


def test_table_and_arch_info():
    for name, (builder, desc) in BACKBONES.items():
        assert callable(builder) and desc and "\n" not in desc
        info = backbone_arch_info(name, image_size=32)
        assert info["feature_dim"] == build_backbone(name, image_size=32)[1]
    info = backbone_arch_info("resnet18", stem="auto", image_size=96)
    assert info["backbone_stem_resolved"] == "imagenet"
    assert "not a stock torchvision model" in backbone_arch_info("resnet18_w0.5")[
        "torchvision_recipe"][0]
