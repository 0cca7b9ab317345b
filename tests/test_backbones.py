from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ssl_zoo.backbones import build_backbone
from ssl_zoo.errors import ConfigError


@pytest.mark.parametrize("name, stem, size, dim", [
    ("convnet", "auto", 32, 256), ("convnet_w0.5", "auto", 32, 128),
    ("resnet18", "cifar", 32, 512), ("resnet18", "imagenet", 64, 512),
    ("resnet50", "auto", 32, 2048),
])
def test_feature_dims(name, stem, size, dim):
    net, d = build_backbone(name, stem=stem, image_size=size)
    assert d == dim
    assert net(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_cifar_stem_keeps_resolution_and_keys_load_into_torchvision():
    net, _ = build_backbone("resnet18", stem="cifar", image_size=32)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    assert net.layer1(net.relu(net.bn1(net.conv1(x)))).shape[-1] == 32
    ref = torchvision.models.resnet18()
    ref.conv1, ref.maxpool, ref.fc = net.conv1.__class__(3, 64, 3, 1, 1, bias=False), \
        nn.Identity(), nn.Identity()
    ref.load_state_dict(net.state_dict(), strict=True)
    im, _ = build_backbone("resnet18", stem="imagenet")
    plain = torchvision.models.resnet18()
    plain.fc = nn.Identity()
    plain.load_state_dict(im.state_dict(), strict=True)


def test_any_torchvision_model_and_unknown_names():
    net, d = build_backbone("mobilenet_v3_small")
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, d)
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_backbone("resnet81")
