"""Batched views against torchvision's per-image transforms: op by op, and in distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
import views_reference as R
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ssl_zoo import registry
from ssl_zoo.data import views as V
from ssl_zoo.data.views import CropGroup, Views, ViewSpec

P_MIN = 1e-3  # significance level of the distribution tests (all seeded, so deterministic)

NO_AUG = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, brightness=0.0,
              contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0,
              solarize_p=0.0)
"""A group that keeps the whole square image: every op off."""


def _images(b: int, size: int = 32, seed: int = 0, h: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h or size, size), dtype=torch.uint8, generator=g)


def _smooth_images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    """Natural-ish images: low-frequency colour fields, uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                        align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def _spec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **group) -> ViewSpec:
    fields = {**NO_AUG, "count": 1, "size": 32, **group}
    return ViewSpec(groups=[CropGroup(**fields)], mean=mean, std=std)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# random resized crop
# ---------------------------------------------------------------------------------------------
def _get_params_loop(u_area, u_logr, u_top, u_left, height, width, scale, ratio):
    """RandomResizedCrop.get_params written out per sample in float64, fed our uniforms."""
    out = []
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for i in range(u_area.shape[0]):
        for t in range(u_area.shape[1]):
            target = area * (scale[0] + float(u_area[i, t]) * (scale[1] - scale[0]))
            aspect = math.exp(lo + float(u_logr[i, t]) * (hi - lo))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(math.floor(float(u_top[i]) * (height - h + 1))), height - h)
                left = min(int(math.floor(float(u_left[i]) * (width - w + 1))), width - w)
                out.append((top, left, h, w))
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            out.append(((height - h) // 2, (width - w) // 2, h, w))
    return torch.tensor(out, dtype=torch.float32)


def _assert_boxes_like_get_params(ours: torch.Tensor, height: int, width: int, scale, ratio,
                                  seed: int) -> None:
    """Our (n, 4) boxes lie inside the image and follow torchvision's
    ``RandomResizedCrop.get_params`` on a ``height`` x ``width`` image: KS tests of area
    fraction, log aspect and centre against as many of its draws (a tiny image, where a
    quantity has one possible value, must match it exactly)."""
    torch.manual_seed(seed)
    img = torch.empty(1, height, width)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
                        for _ in range(len(ours))], dtype=torch.float32)
    for boxes in (ours, ref):  # every box lies inside the image
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= height).all() and (left + w <= width).all()
    for name, f in [("area fraction", lambda b: b[:, 2] * b[:, 3] / (height * width)),
                    ("log aspect", lambda b: torch.log(b[:, 3] / b[:, 2])),
                    ("centre y", lambda b: (b[:, 0] + b[:, 2] / 2) / height),
                    ("centre x", lambda b: (b[:, 1] + b[:, 3] / 2) / width)]:
        a, b = f(ours).numpy(), f(ref).numpy()
        if (a == a[0]).all() and (b == b[0]).all():  # a tiny image: one possible value
            assert a[0] == b[0], name
            continue
        p = stats.ks_2samp(a, b).pvalue
        assert p > P_MIN, f"{name}: KS p = {p}"


@pytest.mark.parametrize("height,width,scale,ratio", [
    (32, 32, (0.14, 1.0), (3 / 4, 4 / 3)),
    (32, 32, (0.05, 0.14), (3 / 4, 4 / 3)),
    (12, 40, (0.6, 1.0), (3 / 4, 4 / 3)),  # wide image: most samples fall back
    (40, 12, (0.6, 1.0), (3 / 4, 4 / 3)),  # tall image
])
def test_boxes_equal_per_sample_get_params_loop(height, width, scale, ratio):
    n, a = 400, V.CROP_ATTEMPTS
    u = torch.rand(n, 2 * a + 2, generator=_gen(1))
    ours = V.boxes_from_uniforms(u[:, :a], u[:, a:2 * a], u[:, 2 * a], u[:, 2 * a + 1],
                                 height, width, scale, ratio)
    ref = _get_params_loop(u[:, :a], u[:, a:2 * a], u[:, 2 * a], u[:, 2 * a + 1],
                           height, width, scale, ratio)
    # float32 vs float64 may round a size exactly at .5 differently: allow 1 in 200
    assert (ours != ref).any(1).float().mean() <= 0.005


@pytest.mark.parametrize("height,width,scale,ratio", [
    (32, 32, (0.14, 1.0), (3 / 4, 4 / 3)), (32, 32, (0.05, 0.14), (3 / 4, 4 / 3)),
    (224, 224, (0.14, 1.0), (3 / 4, 4 / 3)), (12, 40, (0.6, 1.0), (3 / 4, 4 / 3)),
    (48, 24, (0.08, 1.0), (0.5, 2.0)),
])
def test_box_distribution_matches_torchvision_get_params(height, width, scale, ratio):
    n = 2000
    ours = R.crop_boxes(n, height, width, scale, ratio, generator=_gen(2))
    _assert_boxes_like_get_params(ours, height, width, scale, ratio, seed=3)
    if height == width:  # no fallback possible: the ranges hold up to rounding of h and w
        frac = ours[:, 2] * ours[:, 3] / (height * width)
        slack = (ours[:, 2] + ours[:, 3] + 1) / (2 * height * width) + 1e-6
        assert (frac >= scale[0] - slack).all() and (frac <= scale[1] + slack).all()
        aspect = ours[:, 3] / ours[:, 2]
        assert (aspect >= ratio[0] * (1 - 1 / ours[:, 2].clamp(max=8))).all()


def test_fallback_is_torchvisions_central_crop():
    # no try can fit (area 5-6 times the image): torchvision's centre crop, aspect clamped
    for height, width in [(10, 40), (40, 10), (20, 20)]:
        boxes = R.crop_boxes(3, height, width, (5.0, 6.0), (0.8, 1.25), generator=_gen())
        ref = T.RandomResizedCrop.get_params(torch.empty(1, height, width), [5.0, 6.0],
                                             [0.8, 1.25])
        assert boxes.tolist() == [list(ref)] * 3


# ---------------------------------------------------------------------------------------------
# random parameters: probabilities and factor ranges
# ---------------------------------------------------------------------------------------------
def test_params_probabilities_and_factor_ranges():
    g = CropGroup(count=1, size=8, flip_p=0.5, jitter_p=0.8, brightness=0.8, contrast=0.4,
                  saturation=0.6, hue=0.2, grayscale_p=0.2, blur_p=0.3, blur_sigma=(0.1, 2.0),
                  solarize_p=0.1)
    n = 6000
    p = V.draw_params(n, 32, 32, g, torch.device("cpu"), _gen(4))
    for name, mask, prob in [("flip", p.flip, g.flip_p), ("gray", p.grayscale, g.grayscale_p),
                             ("blur", p.blur, g.blur_p), ("solarize", p.solarize, g.solarize_p),
                             ("jitter", p.jitter_order[:, 0] >= 0, g.jitter_p)]:
        k = int(mask.sum())
        assert stats.binomtest(k, n, prob).pvalue > P_MIN, f"{name}: {k}/{n} vs p={prob}"
    ranges = [(1 - g.brightness, 1 + g.brightness), (1 - g.contrast, 1 + g.contrast),
              (1 - g.saturation, 1 + g.saturation), (-g.hue, g.hue)]
    for j, (lo, hi) in enumerate(ranges):
        f = p.jitter_factors[:, j]
        assert (f >= lo).all() and (f <= hi).all()
        assert stats.kstest(f.numpy(), "uniform", args=(lo, hi - lo)).pvalue > P_MIN
    s = p.blur_sigma
    assert stats.kstest(s.numpy(), "uniform", args=(0.1, 1.9)).pvalue > P_MIN
    # orders of jittered samples: permutations of 0..3, all 24 equally likely
    on = p.jitter_order[p.jitter_order[:, 0] >= 0]
    assert (on.sort(1).values == torch.arange(4)).all()
    assert (p.jitter_order[p.jitter_order[:, 0] < 0] == -1).all()
    perms = {q: i for i, q in enumerate(itertools.permutations(range(4)))}
    counts = torch.bincount(torch.tensor([perms[tuple(r)] for r in on.tolist()]), minlength=24)
    assert stats.chisquare(counts.numpy()).pvalue > P_MIN


def test_brightness_strength_above_one_keeps_factors_non_negative():
    g = CropGroup(brightness=1.5, contrast=0.0, saturation=0.0, hue=0.5)
    p = V.draw_params(2000, 8, 8, g, torch.device("cpu"), _gen(5))
    assert (p.jitter_factors[:, 0] >= 0).all() and p.jitter_factors[:, 0].max() <= 2.5
    assert stats.kstest(p.jitter_factors[:, 0].numpy(), "uniform", args=(0, 2.5)).pvalue > P_MIN


# ---------------------------------------------------------------------------------------------
# colour ops, one sample at a time, against torchvision's functional ops
# ---------------------------------------------------------------------------------------------
def _test_image(seed=0, h=20, w=24) -> torch.Tensor:
    """A float image with random pixels, gray rows and r == g ties (hue edge cases)."""
    x = _images(1, w, seed, h).float() / 255
    x[..., :3, :] = x[..., :3, :].mean(1, keepdim=True)
    x[:, 1, 3:6] = x[:, 0, 3:6]
    x[:, 2, 6:8] = x[:, 0, 6:8]
    x[..., 8, :3] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    return x


@pytest.mark.parametrize("factor", [0.0, 0.2, 0.9, 1.0, 1.3, 1.8])
def test_linear_colour_ops_match_torchvision(factor):
    x = _test_image(1)
    f = torch.tensor([factor])
    for ours, ref in [(R.adjust_brightness, TF.adjust_brightness),
                      (R.adjust_contrast, TF.adjust_contrast),
                      (R.adjust_saturation, TF.adjust_saturation)]:
        torch.testing.assert_close(ours(x, f), ref(x, factor), atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(f=st.floats(-0.5, 0.5), seed=st.integers(0, 10_000))
def test_hue_matches_torchvision_hsv_roundtrip(f, seed):
    x = _test_image(seed, 10, 7)
    torch.testing.assert_close(V.adjust_hue(x, torch.tensor([f])), TF.adjust_hue(x, f),
                               atol=3e-6, rtol=0)


def test_hue_keeps_value_and_chroma_and_zero_is_identity():
    x = _test_image(3)
    y = V.adjust_hue(x, torch.tensor([0.27]))
    torch.testing.assert_close(y.amax(1), x.amax(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.amin(1), x.amin(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(V.adjust_hue(x, torch.tensor([0.0])), x, atol=1e-6, rtol=0)
    # a full turn is the identity too
    torch.testing.assert_close(V.adjust_hue(y, torch.tensor([0.5])),
                               V.adjust_hue(y, torch.tensor([-0.5])), atol=1e-6, rtol=0)


def test_grayscale_solarize_blur_match_torchvision():
    x = _test_image(4, 40, 40)
    torch.testing.assert_close(V.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(V.solarize(x), TF.solarize(x, 128 / 255), atol=0, rtol=0)
    for sigma, k in [(0.1, 3), (0.8, 5), (1.5, 9), (2.0, 23)]:
        torch.testing.assert_close(R.gaussian_blur(x, torch.tensor([sigma]), k),
                                   TF.gaussian_blur(x, [k, k], [sigma, sigma]),
                                   atol=2e-6, rtol=0)


def test_blur_is_per_sample():
    x = _images(3, 24, 5).float() / 255
    sigma = torch.tensor([0.3, 1.1, 2.0])
    out = R.gaussian_blur(x, sigma, 7)
    for i in range(3):
        s = float(sigma[i])
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [7, 7], [s, s]),
                                   atol=2e-6, rtol=0)


def test_color_jitter_equals_torchvision_ops_in_each_samples_order():
    n = 30
    x = _images(n, 12, 6).float() / 255
    g = torch.Generator().manual_seed(7)
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    order[:3] = -1  # not jittered
    factors = torch.stack([torch.rand(n, generator=g) * 1.6 + 0.2,
                           torch.rand(n, generator=g) * 1.6 + 0.2,
                           torch.rand(n, generator=g) * 1.6 + 0.2,
                           torch.rand(n, generator=g) - 0.5], dim=1)
    for strengths in [(0.8, 0.8, 0.8, 0.5), (0.8, 0.0, 0.8, 0.0)]:
        ours = V.color_jitter(x.clone(), order, factors, strengths)
        fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        for i in range(n):
            ref = x[i]
            for op in order[i].tolist():
                if op >= 0 and strengths[op] != 0:
                    ref = fns[op](ref, float(factors[i, op]))
            torch.testing.assert_close(ours[i], ref, atol=5e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------------------------
def _params(boxes, flip) -> V.GroupParams:
    n = len(boxes)
    return V.GroupParams(
        boxes=torch.tensor(boxes, dtype=torch.float32), flip=torch.tensor(flip),
        jitter_order=torch.full((n, 4), -1), jitter_factors=torch.ones(n, 4),
        grayscale=torch.zeros(n, dtype=torch.bool), blur=torch.zeros(n, dtype=torch.bool),
        blur_sigma=torch.ones(n), solarize=torch.zeros(n, dtype=torch.bool))


def _source(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.flip(-1)])


def test_crop_resize_against_torchvision_resized_crop():
    x = _images(2, 32, 8).float() / 255
    src = _source(x)
    # the whole image at its own size: exact
    out = V.crop_resize(src, 2, _params([(0, 0, 32, 32)] * 2, [False, False]), 32)
    assert torch.equal(out, x)
    # enlarged crops: bilinear, exact away from the crop border (torchvision clamps at the
    # border; roi_align reads the neighbouring pixels outside the crop)
    for box, size in [((3, 5, 12, 10), 16), ((10, 7, 16, 9), 32), ((0, 0, 20, 32), 32)]:
        out = V.crop_resize(src, 2, _params([box, box], [False, True]), size)
        ref = TF.resized_crop(x[0], *box, [size, size], antialias=True)
        scale_y, scale_x = size / box[2], size / box[3]
        my, mx = math.ceil(scale_y / 2 + 0.5), math.ceil(scale_x / 2 + 0.5)
        torch.testing.assert_close(out[0, :, my:-my, mx:-mx], ref[:, my:-my, mx:-mx],
                                   atol=1e-6, rtol=0)
        ref1 = TF.resized_crop(x[1], *box, [size, size], antialias=True).flip(-1)
        torch.testing.assert_close(out[1, :, my:-my, mx:-mx], ref1[:, my:-my, mx:-mx],
                                   atol=1e-6, rtol=0)


def test_shrinking_crops_are_antialiased():
    """Shrunk crops of smooth images stay close to torchvision's anti-aliased resize, and
    much closer than plain (aliasing) bilinear sampling of noise is to it."""
    x = _smooth_images(2, 64, 9).float() / 255
    src = _source(x)
    for box, size in [((0, 0, 64, 64), 28), ((5, 9, 50, 40), 16)]:
        out = V.crop_resize(src, 2, _params([box], [False]), size)[0]
        ref = TF.resized_crop(x[0], *box, [size, size], antialias=True)
        assert (out - ref).abs().mean() < 3e-3
    noise = _images(1, 64, 10).float() / 255
    box, size = (0, 0, 64, 64), 16
    ours = V.crop_resize(_source(noise), 1, _params([box], [False]), size)[0]
    ref = TF.resized_crop(noise[0], *box, [size, size], antialias=True)
    aliased = TF.resized_crop(noise[0], *box, [size, size], antialias=False)
    assert (ours - ref).abs().mean() < 0.5 * (aliased - ref).abs().mean()


def test_flipped_crop_is_the_mirror_of_the_crop():
    x = _images(3, 32, 11).float() / 255
    boxes = [(3, 5, 12, 10), (0, 0, 32, 32), (7, 2, 25, 19)]
    plain = V.crop_resize(_source(x), 3, _params(boxes, [False] * 3), 24)
    flipped = V.crop_resize(_source(x), 3, _params(boxes, [True] * 3), 24)
    # the same samples mirrored; only the float rounding of sample positions differs
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# make_views end to end
# ---------------------------------------------------------------------------------------------
def test_layout_is_crop_major_with_one_image_per_row():
    b = 5
    colours = torch.arange(b, dtype=torch.uint8).mul(40).add(10)
    images = colours.view(b, 1, 1, 1).expand(b, 3, 20, 20).contiguous()
    spec = ViewSpec(groups=[CropGroup(count=3, size=12, jitter_p=0.0, grayscale_p=0.0),
                            CropGroup(count=2, size=6, scale=(0.05, 0.3), jitter_p=0.0,
                                      grayscale_p=0.0)],
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    views = V.make_views(images, spec, _gen(12))
    assert views.counts == [3, 2] and len(views) == 5 and views.batch_size == b
    for group, count in zip(views.groups, views.counts):
        for k in range(count):
            rows = group[k * b:(k + 1) * b]
            expect = (colours.float() / 255).view(b, 1, 1, 1).expand_as(rows)
            torch.testing.assert_close(rows, expect, atol=1e-6, rtol=0)
    assert views[3].shape == (b, 3, 6, 6)


def test_normalisation_is_exact():
    images = _images(4, 16, 13)
    mean, std = V.CIFAR_MEAN, V.CIFAR_STD
    out = V.make_views(images, _spec(mean, std, size=16), _gen()).groups[0]
    ref = T.Normalize(mean, std)(images.float() / 255)
    assert torch.equal(out, ref)


def test_flips_are_exact():
    images = _images(6, 16, 14)
    x = images.float() / 255
    always = V.make_views(images, _spec(size=16, flip_p=1.0), _gen()).groups[0]
    assert torch.equal(always, x.flip(-1))
    never = V.make_views(images, _spec(size=16, flip_p=0.0), _gen()).groups[0]
    assert torch.equal(never, x)
    half = V.make_views(_images(400, 8, 15), _spec(size=8, flip_p=0.5), _gen()).groups[0]
    x = _images(400, 8, 15).float() / 255
    is_flipped = (half == x.flip(-1)).flatten(1).all(1)
    assert ((half == x).flatten(1).all(1) | is_flipped).all()
    assert stats.binomtest(int(is_flipped.sum()), 400, 0.5).pvalue > P_MIN


def test_gray_image_stays_gray_under_hue_and_saturation_jitter():
    levels = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=_gen(16))
    images = levels.expand(64, 3, 16, 16).contiguous()
    spec = ViewSpec(groups=[CropGroup(count=2, size=16, jitter_p=1.0, brightness=0.4,
                                      contrast=0.4, saturation=0.8, hue=0.5, grayscale_p=0.0)],
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = V.make_views(images, spec, _gen()).groups[0]
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 0], out[:, 2], atol=1e-6, rtol=0)


def test_zero_hue_strength_is_identity():
    images = _images(16, 16, 17)
    no_jitter = V.make_views(images, _spec(size=16), _gen()).groups[0]
    hue_off = V.make_views(images, _spec(size=16, jitter_p=1.0, hue=0.0), _gen()).groups[0]
    assert torch.equal(hue_off, no_jitter)


def test_jitter_distribution_matches_torchvision_color_jitter():
    """Per-image statistics of a jittered image: ours vs RandomApply(ColorJitter) per image."""
    n = 800
    base = _smooth_images(1, 8, 18)
    strengths = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
    spec = _spec(size=8, jitter_p=0.8, **strengths)
    ours = V.make_views(base.expand(n, 3, 8, 8).contiguous(), spec, _gen(19)).groups[0]
    torch.manual_seed(20)
    tv = T.RandomApply([T.ColorJitter(**strengths)], p=0.8)
    x = base[0].float() / 255
    ref = torch.stack([tv(x) for _ in range(n)])
    for name, f in [("red mean", lambda y: y[:, 0].mean((1, 2))),
                    ("blue mean", lambda y: y[:, 2].mean((1, 2))),
                    ("contrast", lambda y: y.std((1, 2, 3))),
                    ("saturation", lambda y: (y.amax(1) - y.amin(1)).mean((1, 2)))]:
        # rounded, so that the un-jittered 20% are one point mass in both samples
        p = stats.ks_2samp(f(ours).round(decimals=5).numpy(),
                           f(ref).round(decimals=5).numpy()).pvalue
        assert p > P_MIN, f"{name}: KS p = {p}"


def test_brightness_factors_seen_in_the_output_are_uniform():
    """End to end: output / input of a flat image is the brightness factor, U(1-b, 1+b), on a
    fraction jitter_p of the samples."""
    n, b = 3000, 0.4
    images = torch.full((n, 3, 4, 4), 100, dtype=torch.uint8)
    spec = _spec(size=4, jitter_p=0.7, brightness=b)
    out = V.make_views(images, spec, _gen(36)).groups[0][:, 0, 0, 0] * 255 / 100
    changed = (out - 1).abs() > 1e-6
    assert stats.binomtest(int(changed.sum()), n, 0.7).pvalue > P_MIN
    factors = out[changed].numpy()
    assert stats.kstest(factors, "uniform", args=(1 - b, 2 * b)).pvalue > P_MIN


def test_parameters_are_drawn_per_sample():
    """Copies of one image get different crops, flips and colours."""
    images = _images(1, 32, 37).repeat(16, 1, 1, 1)
    views = V.make_views(images, _method_views("swav", 32), _gen(38))
    for crop in views:
        flat = crop.flatten(1)
        assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0


def test_grayscale_probability_end_to_end():
    images = _images(1000, 8, 21)
    out = V.make_views(images, _spec(size=8, grayscale_p=0.2), _gen(22)).groups[0]
    gray = ((out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])).flatten(1).all(1)
    assert stats.binomtest(int(gray.sum()), 1000, 0.2).pvalue > P_MIN
    ref = TF.rgb_to_grayscale(images[gray].float() / 255)
    torch.testing.assert_close(out[gray][:, :1], ref, atol=1e-6, rtol=0)


def test_blur_and_solarize_end_to_end_against_torchvision():
    images = _images(12, 40, 23)
    x = images.float() / 255
    group = dict(size=40, blur_p=0.5, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.8,
                 solarize_p=0.5)
    out = V.make_views(images, _spec(**group), _gen(24)).groups[0]
    p = V.draw_params(12, 40, 40, CropGroup(count=1, **{**NO_AUG, **group}),
                      torch.device("cpu"), _gen(24))
    k_tv = 33  # torchvision's kernel: 80% of 40 px, odd; ours is cut at 4 sigma_max = 17
    assert V.blur_kernel_size(CropGroup(**{**NO_AUG, **group})) == 17
    for i in range(12):
        ref = x[i]
        if p.blur[i]:
            s = float(p.blur_sigma[i])
            ref = TF.gaussian_blur(ref, [k_tv, k_tv], [s, s])
        if p.solarize[i]:
            ref = TF.solarize(ref, 128 / 255)
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=0)
    assert p.blur.any() and (~p.blur).any() and p.solarize.any()


def _method_views(name: str, image_size: int) -> ViewSpec:
    """A registered method's default view spec with its default config."""
    cls = registry.get_method(name)
    return cls.default_views(cls.Config(), image_size)


@pytest.mark.parametrize("name", ["swav", "simclr", "moco", "pcl"])
@pytest.mark.parametrize("image_size", [32, 96, 224])
def test_every_default_spec_gives_float32_views_of_the_right_shapes(name, image_size):
    spec = _method_views(name, image_size)
    b = 2
    views = V.make_views(_images(b, image_size, 25), spec, _gen())
    active = [g for g in spec.groups if g.count]  # SwAV at 32 px: local crops off (count 0)
    assert isinstance(views, Views) and views.counts == [g.count for g in active]
    assert len(views) == spec.num_crops
    for tensor, g in zip(views.groups, active):
        assert tensor.shape == (g.count * b, 3, g.size, g.size)
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert torch.isfinite(tensor).all()


def test_default_sizes_follow_the_papers():
    imagenet = _method_views("swav", 224)
    assert [(g.count, g.size, g.scale) for g in imagenet.groups] == [
        (2, 224, (0.14, 1.0)), (6, 96, (0.05, 0.14))]
    assert all(g.blur_p == 0.5 for g in imagenet.groups)
    cifar = _method_views("swav", 32)
    # CIFAR size: the local group is kept but off (ssl-zoo's small-scale sweep, not the paper)
    assert [(g.count, g.size) for g in cifar.groups] == [(2, 32), (0, 16)]
    assert all(g.blur_p == 0 for g in cifar.groups)
    assert _method_views("moco", 224).groups[0].scale == (0.2, 1.0)
    assert _method_views("simclr", 32).groups[0].scale == (0.08, 1.0)
    multi = V.multi_crop(224, 96, 6, (0.14, 1.0), (0.05, 0.14), 1.0, 0.5)
    assert [(g.count, g.size) for g in multi.groups] == [(2, 224), (6, 96)]
    assert [g.count for g in V.multi_crop(32, 16, 0, (0.14, 1), (0.05, 0.14), 1, 0).groups] \
        == [2]


def test_colour_strength_and_blur_kernel_follow_each_reference():
    def strength(g):  # brightness, contrast, saturation 0.8 s; hue 0.2 s
        return [g.brightness / 0.8, g.contrast / 0.8, g.saturation / 0.8, g.hue / 0.2]

    # SimCLR: strength 0.5 on CIFAR (App. B.9), 1 at ImageNet size (App. A)
    assert strength(_method_views("simclr", 32).groups[0]) == pytest.approx([0.5] * 4)
    assert strength(_method_views("simclr", 224).groups[0]) == pytest.approx([1.0] * 4)
    assert strength(_method_views("moco", 224).groups[0]) == pytest.approx([0.5] * 4)
    # blur kernel: SimCLR's is 10% of the crop, odd (96 px: 11); the MoCo v2 and SwAV code's
    # PIL blur has no cap, so only the 4 sigma_max cut stays (2 x 8 + 1 = 17)
    assert V.blur_kernel_size(_method_views("simclr", 96).groups[0]) == 11
    assert V.blur_kernel_size(_method_views("moco", 96).groups[0]) == 17
    assert [V.blur_kernel_size(g) for g in _method_views("swav", 224).groups] == [17, 17]


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        V.make_views(torch.rand(2, 3, 8, 8), _spec(size=8))
    with pytest.raises(ValueError, match="RGB"):
        V.make_views(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _spec(size=8))


def test_same_seed_same_views_and_other_seed_other_views():
    images = _images(8, 32, 26)
    spec = _method_views("swav", 32)
    a = V.make_views(images, spec, _gen(27))
    b = V.make_views(images, spec, _gen(27))
    c = V.make_views(images, spec, _gen(28))
    assert all(torch.equal(x, y) for x, y in zip(a.groups, b.groups))
    assert not torch.equal(a.groups[0], c.groups[0])
    torch.manual_seed(29)  # no generator: the global one
    d = V.make_views(images, spec)
    torch.manual_seed(29)
    e = V.make_views(images, spec)
    assert all(torch.equal(x, y) for x, y in zip(d.groups, e.groups))


def test_views_can_enter_autograd():
    views = V.make_views(_images(2, 16, 30), _spec(size=16))
    w = torch.ones(1, requires_grad=True)
    (views.groups[0] * w).sum().backward()
    assert w.grad is not None


# ---------------------------------------------------------------------------------------------
# evaluation view
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,size", [(32, 32, 32), (64, 64, 48), (40, 60, 32), (60, 44, 28),
                                      (24, 24, 32), (256, 256, 224)])
def test_eval_view_is_torchvision_resize_center_crop(h, w, size):
    images = _smooth_images(2, max(h, w), 31)[..., :h, :w].contiguous()
    out = V.eval_view(images, size, V.IMAGENET_MEAN, V.IMAGENET_STD)
    resize = int(size / 0.875) if min(h, w) > size else size
    ref = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(size),
                     T.Normalize(V.IMAGENET_MEAN, V.IMAGENET_STD)])(images.float() / 255)
    assert out.shape == (2, 3, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(out, V.eval_view(images, size, V.IMAGENET_MEAN, V.IMAGENET_STD))


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_with_cuda_or_cpu_generator():
    images = _images(4, 32, 35).cuda()
    spec = _method_views("swav", 32)
    gen = torch.Generator(device="cuda")
    a = V.make_views(images, spec, gen.manual_seed(1))
    b = V.make_views(images, spec, gen.manual_seed(1))
    assert all(t.device.type == "cuda" and t.dtype == torch.float32 for t in a.groups)
    assert all(torch.equal(x, y) for x, y in zip(a.groups, b.groups))
    c = V.make_views(images, spec, _gen(1))  # a CPU generator also works
    cpu = V.make_views(images.cpu(), spec, _gen(1))  # and draws the same parameters
    for x, y in zip(c.groups, cpu.groups):
        torch.testing.assert_close(x.cpu(), y, atol=1e-4, rtol=0)


def _rank(values: list[float], i: int) -> int:
    """Place of ``values[i]`` in ascending order."""
    return sorted(range(len(values)), key=values.__getitem__).index(i)


@pytest.mark.parametrize("n", [1, 10, 37])
def test_draw_params_reads_one_uniform_block_in_the_documented_order(n):
    """The random parameters of n crops come from one (n, 36) torch.rand draw, read per row in
    this order (what keeps the crops of a seed the same from version to version): 10 area and
    10 log-aspect tries, top, left, flip, jitter on, 4 jitter factors, 3 keys ordering
    brightness, contrast and saturation, the hue-position key, grayscale, the blur key, blur
    sigma, solarize. Written out per row in Python from the raw draw."""
    g = CropGroup(count=1, size=8, flip_p=0.5, jitter_p=0.7, brightness=0.8, contrast=0.3,
                  saturation=1.2, hue=0.2, grayscale_p=0.3, blur_p=0.4, blur_sigma=(0.2, 1.5),
                  solarize_p=0.3)
    raw_gen, gen = _gen(51), _gen(51)
    u = torch.rand(n, 36, generator=raw_gen)
    p = V.draw_params(n, 24, 20, g, torch.device("cpu"), gen)
    assert torch.equal(gen.get_state(), raw_gen.get_state())  # that one draw, nothing else
    a = 10
    boxes = V.boxes_from_uniforms(u[:, :a], u[:, a:2 * a], u[:, 20], u[:, 21], 24, 20, g.scale,
                                  g.ratio)
    assert torch.equal(p.boxes, boxes)
    rows = u.double().tolist()
    hue_keys, blur_keys = [r[31] for r in rows], [r[33] for r in rows]
    hue_bounds = list(itertools.accumulate(n // 4 + (j < n % 4) for j in range(4)))
    n_blur = round(g.blur_p * n)
    ranges = [(1 - g.brightness, 1 + g.brightness), (1 - g.contrast, 1 + g.contrast),
              (0.0, 1 + g.saturation), (-g.hue, g.hue)]
    for i, r in enumerate(rows):
        assert bool(p.flip[i]) == (r[22] < g.flip_p)
        factors = [lo + r[24 + j] * (hi - lo) for j, (lo, hi) in enumerate(ranges)]
        assert p.jitter_factors[i].tolist() == pytest.approx(factors, abs=1e-6)
        linear = sorted(range(3), key=lambda k: r[28 + k])
        hue_at = sum(_rank(hue_keys, i) >= b for b in hue_bounds[:-1])
        order = linear[:hue_at] + [3] + linear[hue_at:] if r[23] < g.jitter_p else [-1] * 4
        assert p.jitter_order[i].tolist() == order
        assert bool(p.grayscale[i]) == (r[32] < g.grayscale_p)
        assert bool(p.blur[i]) == (_rank(blur_keys, i) >= n - n_blur)
        assert float(p.blur_sigma[i]) == pytest.approx(0.2 + r[34] * 1.3, abs=1e-6)
        assert bool(p.solarize[i]) == (r[35] < g.solarize_p)


def test_balanced_choices_keep_each_rows_probabilities():
    """Hue position and blur are stratified over the batch (fixed-size subsets, no device
    reads), yet every row on its own does them with torchvision's probabilities."""
    g = CropGroup(count=1, size=8, jitter_p=1.0, blur_p=0.5)
    n, draws = 8, 1500
    hue_at = torch.empty(draws, n, dtype=torch.long)
    blur = torch.empty(draws, n, dtype=torch.bool)
    for d in range(draws):
        p = V.draw_params(n, 16, 16, g, torch.device("cpu"), _gen(1000 + d))
        hue_at[d] = (p.jitter_order == 3).long().argmax(1)
        blur[d] = p.blur
        # within a batch: a quarter of the rows at each position, half of them blurred
        assert torch.bincount(hue_at[d], minlength=4).tolist() == [2, 2, 2, 2]
        assert int(p.blur.sum()) == 4 and sorted(p.blur_index.tolist()) == \
            p.blur.nonzero().squeeze(1).tolist()
        for pos, rows in enumerate(p.hue_subsets):
            assert (hue_at[d][rows] == pos).all()
    for row in range(n):  # across batches: each row's position uniform, blur with p = 0.5
        counts = torch.bincount(hue_at[:, row], minlength=4).numpy()
        assert stats.chisquare(counts).pvalue > P_MIN, (row, counts)
        assert stats.binomtest(int(blur[:, row].sum()), draws, 0.5).pvalue > P_MIN


# ---------------------------------------------------------------------------------------------
# real-size images: crops in each original's geometry, cut from a canvas
# ---------------------------------------------------------------------------------------------
ORIGINALS = [(375, 500), (300, 400), (100, 50), (6, 5), (3, 9)]
"""(h, w) of originals: 4:3 landscape, 1:2 portrait, tiny ones smaller than any crop."""


def _smooth_original(h: int, w: int, seed: int) -> torch.Tensor:
    """A float (3, h, w) image of known, low-frequency content: colour ramps and a sine."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(h, 1)
    xx = torch.linspace(0, 1, w).view(1, w)
    a, b = torch.rand(2, 3, 1, 1, generator=g)
    return (0.5 + 0.25 * torch.sin(6 * a * yy + 5 * b * xx + a * 3)
            + 0.2 * (xx - yy)).clamp(0, 1).expand(3, h, w).contiguous()


def _canvas(x: torch.Tensor, side: int) -> torch.Tensor:
    """The whole float image stretched to side x side, as uint8 (the store's layout)."""
    y = torch.nn.functional.interpolate(x.unsqueeze(0), size=(side, side), mode="bilinear",
                                        align_corners=False, antialias=True)
    return (y[0] * 255).round().clamp(0, 255).to(torch.uint8)


def test_per_sample_boxes_equal_the_get_params_loop_on_each_original():
    n, a = 600, V.CROP_ATTEMPTS
    u = torch.rand(n, 2 * a + 2, generator=_gen(41))
    sizes = torch.tensor(ORIGINALS * (n // len(ORIGINALS)))
    for scale, ratio in [((0.14, 1.0), (3 / 4, 4 / 3)), ((0.05, 0.14), (3 / 4, 4 / 3)),
                         ((0.6, 1.0), (3 / 4, 4 / 3)), ((5.0, 6.0), (0.8, 1.25))]:
        ours = V.boxes_from_uniforms(u[:, :a], u[:, a:2 * a], u[:, 2 * a], u[:, 2 * a + 1],
                                     sizes[:, 0], sizes[:, 1], scale, ratio)
        ref = torch.cat([_get_params_loop(u[i:i + 1, :a], u[i:i + 1, a:2 * a],
                                          u[i:i + 1, 2 * a], u[i:i + 1, 2 * a + 1],
                                          int(h), int(w), scale, ratio)
                         for i, (h, w) in enumerate(sizes.tolist())])
        assert (ours != ref).any(1).float().mean() <= 0.005, scale


def test_vectorised_fallback_is_torchvisions_on_every_size():
    sizes = torch.tensor([(10, 40), (40, 10), (20, 20), (375, 500), (7, 3), (1, 1), (2, 9)])
    for ratio in [(0.8, 1.25), (3 / 4, 4 / 3), (0.5, 2.0)]:
        ours = V.fallback_boxes(sizes[:, 0], sizes[:, 1], ratio)
        ref = [T.RandomResizedCrop.get_params(torch.empty(1, h, w), [5.0, 6.0], list(ratio))
               for h, w in sizes.tolist()]
        assert ours.tolist() == [list(map(float, r)) for r in ref]


@pytest.mark.parametrize("height,width,scale", [
    (375, 500, (0.14, 1.0)), (375, 500, (0.05, 0.14)), (100, 50, (0.14, 1.0)),
    (100, 50, (0.08, 1.0)), (6, 5, (0.14, 1.0)), (3, 9, (0.05, 0.14)),
])
def test_per_sample_box_distribution_matches_get_params_on_the_original(height, width, scale):
    n, ratio = 2000, (3 / 4, 4 / 3)
    hs, ws = torch.full((n,), height), torch.full((n,), width)
    ours = R.crop_boxes(n, hs, ws, scale, ratio, generator=_gen(42))
    _assert_boxes_like_get_params(ours, height, width, scale, ratio, seed=43)


def test_sizes_equal_to_the_images_own_change_nothing():
    images = _images(6, 24, 44, h=24)
    spec = _method_views("swav", 24)
    sizes = torch.full((6, 2), 24)
    a, b = V.make_views(images, spec, _gen(45)), V.make_views(images, spec, _gen(45), sizes)
    for x, y in zip(a.groups, b.groups):
        assert torch.equal(x, y)


def test_crop_through_the_canvas_matches_resized_crop_of_the_original():
    """Tolerance: |ours - torchvision| <= 0.005 on average and 0.03 at most (in [0, 1]) on
    smooth content: ours reads a 160-px canvas (resized once more) where torchvision reads
    the original, and averages instead of its triangle filter when shrinking."""
    originals = [_smooth_original(h, w, s) for s, (h, w) in enumerate([(300, 400), (200, 100),
                                                                      (150, 150), (90, 300)])]
    canvas = torch.stack([_canvas(x, 160) for x in originals])
    sizes = torch.tensor([x.shape[-2:] for x in originals])
    g = CropGroup(count=3, size=64, **{**NO_AUG, "scale": (0.05, 1.0), "ratio": (3 / 4, 4 / 3),
                                       "flip_p": 0.5})
    n, b = g.count * len(originals), len(originals)
    rows = sizes.repeat(g.count, 1)
    params = V.draw_params(n, rows[:, 0], rows[:, 1], g, torch.device("cpu"), _gen(46))
    boxes = params.boxes.clone()  # in original pixels
    params.boxes = V.canvas_boxes(params.boxes, rows, 160, 160)
    source = _source(canvas.float() / 255)
    out = V.augment_group(source, b, g, params)
    errs = []
    for r in range(n):
        top, left, h, w = (int(v) for v in boxes[r])
        ref = TF.resized_crop(originals[r % b], top, left, h, w, [64, 64], antialias=True)
        if params.flip[r]:
            ref = ref.flip(-1)
        errs.append((out[r] - ref).abs())
    err = torch.stack(errs)
    assert err.mean() <= 0.005 and err.max() <= 0.03, (err.mean(), err.max())


@pytest.mark.parametrize("size", [224, 56])
def test_eval_view_of_a_canvas_is_resize_center_crop_of_the_original(size):
    """Same tolerance as the training crops (0.005 mean, 0.03 max before normalisation)."""
    shapes = [(375, 500), (500, 375), (300, 300), (120, 90), (40, 60)]
    originals = [_smooth_original(h, w, s) for s, (h, w) in enumerate(shapes)]
    canvas = torch.stack([_canvas(x, 256) for x in originals])
    sizes = torch.tensor(shapes)
    out = V.eval_view(canvas, size, (0.0,) * 3, (1.0,) * 3, sizes=sizes)
    assert out.shape == (len(shapes), 3, size, size)
    for i, x in enumerate(originals):
        resize = int(size / 0.875) if min(x.shape[-2:]) > size else size
        ref = T.CenterCrop(size)(T.Resize(resize, antialias=True)(x))
        err = (out[i] - ref).abs()
        assert err.mean() <= 0.005 and err.max() <= 0.03, (shapes[i], err.mean(), err.max())


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="original sizes"):
        V.make_views(_images(2, 8), _spec(size=8), sizes=torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="original sizes"):
        V.eval_view(_images(2, 8), 8, sizes=torch.ones(2, 2))
