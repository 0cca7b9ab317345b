"""Crops of one size share one tensor and one backbone pass, whatever their group's recipe and
role (BYOL's two views with different blur / solarize); ``views[i]`` and the features
``Method.encode_views`` returns stay in view-spec order."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from ssl_zoo import registry
from ssl_zoo.data import views as V
from ssl_zoo.data.views import CropGroup, Views, ViewSpec
from ssl_zoo.method import Method

# BYOL-like: two 16-px groups (strong blur / rare blur + solarize), a local group between them
SPEC = ViewSpec(groups=[
    CropGroup(count=1, size=16, blur_p=1.0, solarize_p=0.0, role="global"),
    CropGroup(count=2, size=8, scale=(0.05, 0.3), role="local"),
    CropGroup(count=1, size=16, blur_p=0.1, solarize_p=0.2, role="global"),
], mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _images(b: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def _one_group_at_a_time(images: torch.Tensor, spec: ViewSpec, seed: int) -> list[torch.Tensor]:
    """Every crop in spec order made group by group, each group alone: its parameters drawn in
    spec order from the same generator, then cut, recoloured and normalised on its own."""
    gen = torch.Generator().manual_seed(seed)
    b = images.shape[0]
    x = images.float() / 255
    source = torch.cat([x, x.flip(-1)])
    params = [V.draw_params(g.count * b, images.shape[2], images.shape[3], g, images.device, gen)
              for g in spec.groups]
    out = []
    for g, p in zip(spec.groups, params):
        crops = V.augment_group(source, b, g, p)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        out.extend(((crops - mean) / std).chunk(g.count))
    return out


def test_one_tensor_per_size_and_every_crop_as_made_alone():
    images = _images()
    views = V.make_views(images, SPEC, torch.Generator().manual_seed(3))
    assert [t.shape[-1] for t in views.groups] == [16, 8] and views.counts == [2, 2]
    assert views.slots == [0, 2, 3, 1] and len(views) == 4
    assert views.roles == ["global", "local", "local", "global"]
    assert views.crop_indices("global") == [0, 3]
    reference = _one_group_at_a_time(images, SPEC, 3)
    for ours, ref in zip(views, reference, strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # the two 16-px groups really differ in recipe: blurred crops are smoother
    tv = [(c[..., 1:, :] - c[..., :-1, :]).abs().mean().item() for c in (views[0], views[3])]
    assert tv[0] < tv[1]
    for moved in (views.to(torch.device("cpu")), pickle.loads(pickle.dumps(views))):
        assert moved.slots == views.slots and all(torch.equal(a, b) for a, b in zip(moved, views))


class CountingNet(nn.Module):
    """A small conv net with batch norm that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_same_size_groups_go_through_the_backbone_once():
    torch.manual_seed(0)
    net = CountingNet()
    with torch.no_grad():  # running statistics that are not the identity
        net.net[1].running_mean.uniform_(-0.5, 0.5)
        net.net[1].running_var.uniform_(0.5, 2.0)
    net.eval()  # batch norm on running statistics: a crop's features do not depend on the batch
    method = Method(net, 8)
    views = V.make_views(_images(), SPEC, torch.Generator().manual_seed(5))
    feats = method.encode_views(views)
    assert net.calls == 2  # one pass per crop size: 16 px (both global groups), 8 px
    with torch.no_grad():  # reference: the backbone on each spec group alone, in spec order
        expected = []
        first = 0
        for g in SPEC.groups:
            group = torch.cat([views[i] for i in range(first, first + g.count)])
            expected.extend(net(group).chunk(g.count))
            first += g.count
    assert len(feats) == 4 and all(f.shape == (6, 8) for f in feats)
    for ours, ref in zip(feats, expected, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_in_training_batch_norm_sees_both_same_size_groups_together():
    torch.manual_seed(1)
    net = CountingNet().train()
    views = V.make_views(_images(), SPEC, torch.Generator().manual_seed(5))
    net.net[1].reset_running_stats()
    Method(net, 8).encode_views(views)
    pooled = torch.cat([views[0], views[3]])  # the one 16-px batch
    stats = net.net[0](pooled).mean(dim=(0, 2, 3)) * net.net[1].momentum
    # the first running mean after the 16-px pass: the mean over both groups' crops; the 8-px
    # pass came second, so take it out again
    eight = net.net[0](torch.cat([views[1], views[2]])).mean(dim=(0, 2, 3))
    m = net.net[1].momentum
    torch.testing.assert_close((net.net[1].running_mean - m * eight) / (1 - m), stats.detach(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["swav", "simclr", "moco", "pcl"])
def test_builtin_defaults_keep_one_group_per_size(name):
    """No built-in default spec has two groups of one size, so their batches (and numerics)
    are what they were: one tensor per group, crops in order."""
    cls = registry.get_method(name)
    for image_size in (32, 96, 224):
        sizes = [g.size for g in cls.default_views(cls.Config(), image_size).groups]
        assert len(set(sizes)) == len(sizes), (name, image_size, sizes)
    spec = cls.default_views(cls.Config(), 32)
    for g in spec.groups:
        g.count = g.count or 2  # SwAV's 32-px local group (off by default) turned on
    views = V.make_views(_images(2, 32), spec, torch.Generator().manual_seed(0))
    assert views.counts == [g.count for g in spec.groups]
    assert views.slots == list(range(spec.num_crops))


def test_from_crops_batches_every_crop_of_one_size():
    a, b, c = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)
    views = Views.from_crops([a, b, c])
    assert views.counts == [2, 1] and views.slots == [0, 2, 1]
    assert all(torch.equal(x, y) for x, y in zip(views, [a, b, c], strict=True))
    assert views.roles == ["global", "local", "global"]
    with pytest.raises(ValueError, match="slots must order the 3 crops"):
        Views(views.groups, views.counts, slots=[0, 0, 1])
