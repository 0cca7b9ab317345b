"""Batched views against torchvision's per-image transforms (same distributions, same ops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from ssl_zoo.data.views import (
    PRESETS,
    CropGroup,
    ViewSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_boxes,
    eval_view,
    gaussian_blur,
    make_views,
    preset,
    solarize,
)
from ssl_zoo.errors import ConfigError


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("hw, scale, ratio", [((32, 32), (0.14, 1.0), (3 / 4, 4 / 3)),
                                              ((32, 32), (0.05, 0.14), (3 / 4, 4 / 3)),
                                              ((48, 24), (0.08, 1.0), (0.5, 2.0))])
def test_crop_distribution_matches_torchvision(hw, scale, ratio):
    n = 4000
    h, w = hw
    torch.manual_seed(0)
    ours = crop_boxes(n, h, w, scale, ratio)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), list(scale),
                                                     list(ratio)) for _ in range(n)]).float()
    for boxes in (ours, ref):
        top, left, bh, bw = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + bh <= h).all() and (left + bw <= w).all()
    area = lambda b: (b[:, 2] * b[:, 3] / (h * w)).numpy()  # noqa: E731
    aspect = lambda b: (b[:, 3] / b[:, 2]).numpy()  # noqa: E731
    assert stats.ks_2samp(area(ours), area(ref)).pvalue > 1e-3
    assert stats.ks_2samp(aspect(ours), aspect(ref)).pvalue > 1e-3
    assert stats.ks_2samp(ours[:, 0].numpy(), ref[:, 0].numpy()).pvalue > 1e-3


def test_fallback_is_torchvisions_central_crop():
    # no try can fit: an area far above 1 of a 10x40 image; torchvision returns the centre crop
    boxes = crop_boxes(3, 10, 40, (5.0, 6.0), (1.0, 1.0))
    i, j, h, w = RandomResizedCrop.get_params(torch.empty(1, 10, 40), [5.0, 6.0], [1.0, 1.0])
    assert boxes.tolist() == [[i, j, h, w]] * 3


def test_colour_ops_match_torchvision_functional():
    x = _images(6).float() / 255
    f = torch.tensor([0.3, 0.7, 1.0, 1.4, 1.9, 0.0])
    hue = torch.tensor([-0.5, -0.2, 0.0, 0.1, 0.3, 0.5])
    for i in range(len(f)):
        xi = x[i:i + 1]
        pairs = [
            (adjust_brightness(xi.clone(), f[i:i + 1]), TF.adjust_brightness(xi, float(f[i]))),
            (adjust_contrast(xi.clone(), f[i:i + 1]), TF.adjust_contrast(xi, float(f[i]))),
            (adjust_saturation(xi.clone(), f[i:i + 1]), TF.adjust_saturation(xi, float(f[i]))),
            (adjust_hue(xi.clone(), hue[i:i + 1]), TF.adjust_hue(xi, float(hue[i]))),
            (solarize(xi), TF.solarize(xi, 128 / 255)),
        ]
        for ours, ref in pairs:
            torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_blur_matches_torchvision_per_sample_sigma():
    x = _images(3).float() / 255
    sig = torch.tensor([0.3, 1.0, 2.0])
    out = gaussian_blur(x, sig, 5)
    for i in range(3):
        ref = TF.gaussian_blur(x[i:i + 1], [5, 5], [float(sig[i])] * 2)
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=0)


def test_grey_image_stays_grey_under_hue_and_saturation_jitter():
    grey = torch.full((64, 3, 32, 32), 97, dtype=torch.uint8)
    spec = ViewSpec(groups=[CropGroup(count=2, size=16, jitter_p=1.0, brightness=0,
                                      contrast=0, saturation=0.9, hue=0.5, grayscale_p=0,
                                      flip_p=0.5)], mean=(0, 0, 0), std=(1, 1, 1))
    v = make_views(grey, spec)
    out = v.groups[0]
    spread = out.max(dim=1).values - out.min(dim=1).values  # across R, G, B
    assert float(spread.max()) < 1e-6
    torch.testing.assert_close(out, torch.full_like(out, 97 / 255), atol=1e-4, rtol=0)


def test_hue_zero_is_identity_and_flip_is_exact():
    x = _images(8)
    no_colour = dict(jitter_p=1.0, brightness=0, contrast=0, saturation=0, hue=0.0,
                     grayscale_p=0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    ident = ViewSpec(groups=[CropGroup(count=1, size=32, flip_p=0.0, **no_colour)],
                     mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(make_views(x, ident)[0], x.float() / 255, atol=1e-6, rtol=0)
    flip = ViewSpec(groups=[CropGroup(count=1, size=32, flip_p=1.0, **no_colour)],
                    mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(make_views(x, flip)[0], x.float().flip(-1) / 255, atol=1e-6,
                               rtol=0)


def test_normalisation_is_exact():
    x = _images(2)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    v = eval_view(x, 32, mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    torch.testing.assert_close(v, ref)
    torch.testing.assert_close(eval_view(x, 32, mean, std), v)  # deterministic


def test_probabilities_and_jitter_factors_follow_settings():
    n = 3000
    x = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    x[:, 0] = 200  # a coloured image so grayscale is visible
    torch.manual_seed(0)
    spec = ViewSpec(groups=[CropGroup(count=1, size=8, flip_p=0, jitter_p=0.0, grayscale_p=0.3,
                                      scale=(1, 1), ratio=(1, 1))], mean=(0, 0, 0),
                    std=(1, 1, 1))
    v = make_views(x, spec)[0]
    gray_rate = float((v[:, 0] == v[:, 1]).all(-1).all(-1).float().mean())
    assert abs(gray_rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    # brightness only, always applied: factor = output / input, uniform on [1-b, 1+b]
    b = 0.4
    x = torch.full((n, 3, 4, 4), 100, dtype=torch.uint8)
    spec = ViewSpec(groups=[CropGroup(count=1, size=4, flip_p=0, jitter_p=1.0, brightness=b,
                                      contrast=0, saturation=0, hue=0, grayscale_p=0,
                                      scale=(1, 1), ratio=(1, 1))], mean=(0, 0, 0),
                    std=(1, 1, 1))
    factors = (make_views(x, spec)[0][:, 0, 0, 0] * 255 / 100).numpy()
    assert stats.kstest(factors, stats.uniform(loc=1 - b, scale=2 * b).cdf).pvalue > 1e-3
    # jitter probability: a fraction p of the samples changes
    spec.groups[0].jitter_p = 0.8
    changed = (make_views(x, spec)[0][:, 0, 0, 0] * 255 - 100).abs() > 1e-3
    assert abs(float(changed.float().mean()) - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n)


def test_parameters_are_drawn_per_sample():
    x = _images(1).repeat(16, 1, 1, 1)
    v = make_views(x, preset("swav", 32))
    # identical inputs, different crops: no two samples of a view are the same
    flat = v[0].flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0


def test_seeded_views_are_reproducible():
    x = _images(8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = make_views(x, preset("swav", 32), g1)
    b = make_views(x, preset("swav", 32), g2)
    for ga, gb in zip(a.groups, b.groups):
        assert torch.equal(ga, gb)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_shapes_dtypes_device(name):
    size = 224 if name == "swav_imagenet" else 32
    x = _images(3, size=size if size == 32 else 64)
    spec = preset(name, size)
    if size == 224:  # crop from a smaller image: only the output sizes matter here
        for g in spec.groups:
            g.size = min(g.size, 64)
    v = make_views(x, spec)
    assert len(v) == spec.num_crops
    for crop, g in zip(v.groups, spec.groups):
        assert crop.shape == (g.count * 3, 3, g.size, g.size)
        assert crop.dtype == torch.float32 and crop.device == x.device
    assert v[0].shape[0] == 3 and v.batch_size == 3


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'swav'"):
        preset("swaw", 32)


def test_eval_view_resizes_and_centre_crops():
    x = torch.zeros(1, 3, 40, 60, dtype=torch.uint8)
    x[..., :, 25:35] = 255  # a bright vertical band in the middle
    v = eval_view(x, 20, (0, 0, 0), (1, 1, 1))
    assert v.shape == (1, 3, 20, 20)
    assert v[0, 0, 10, 10] > 0.9 and v[0, 0, 10, 0] < 0.1
    assert np.isclose(float(v[0, 0, :, 10].mean()), float(v[0, 0, :, 9].mean()), atol=0.2)
