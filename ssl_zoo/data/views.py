"""Batched multi-crop views made on the device for a whole uint8 batch at once.

Per-image PIL augmentation of 6-8 crops is the known bottleneck of multi-crop training. Here every
random parameter is still drawn per sample, from the same distributions as torchvision's
per-image transforms (RandomResizedCrop, RandomHorizontalFlip, ColorJitter in a random order,
RandomGrayscale, GaussianBlur, RandomSolarize), but each operation runs once for the whole batch
as tensor code on the batch's device. Crops are cut from the original image and resized once
with ``torchvision.ops.roi_align`` (bilinear, averaging several samples per output pixel when a
crop shrinks, which acts as an anti-aliasing filter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CropGroup:
    """``count`` crops of ``size`` x ``size`` pixels sharing one augmentation recipe."""

    count: int = 2
    size: int = 32
    scale: tuple[float, float] = (0.14, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    blur_kernel_frac: float = 0.1
    """Gaussian kernel size as a fraction of the crop size (SimCLR: 10%), made odd."""


@dataclass
class ViewSpec:
    """The crops a method trains on: groups in order (global first), then normalisation."""

    groups: list[CropGroup] = field(default_factory=lambda: [CropGroup()])
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    @property
    def num_crops(self) -> int:
        return sum(g.count for g in self.groups)


class Views(Sequence):
    """The augmented crops of one batch, grouped by resolution.

    ``groups[g]`` is one tensor of shape (count_g * B, C, size_g, size_g) holding the ``count_g``
    crops of group g stacked crop-major, so ``views[i]`` (crop i, shape (B, C, h, w)) is a free
    slice. ``index`` holds the dataset indices of the B images (for methods that track samples).
    """

    def __init__(self, groups: list[torch.Tensor], counts: list[int],
                 index: torch.Tensor | None = None):
        if len(groups) != len(counts):
            raise ValueError("one count per group")
        self.groups = groups
        self.counts = list(counts)
        self.batch_size = groups[0].shape[0] // counts[0]
        self.index = index
        self._crops: list[torch.Tensor] = []
        for g, c in zip(groups, counts):
            self._crops.extend(g.chunk(c, dim=0))

    @classmethod
    def from_crops(cls, crops: list[torch.Tensor], index: torch.Tensor | None = None) -> Views:
        """Group a flat list of crops by consecutive equal resolution."""
        groups: list[list[torch.Tensor]] = []
        for c in crops:
            if groups and groups[-1][0].shape[-2:] == c.shape[-2:]:
                groups[-1].append(c)
            else:
                groups.append([c])
        return cls([torch.cat(g) for g in groups], [len(g) for g in groups], index)

    def __len__(self) -> int:
        return len(self._crops)

    def __getitem__(self, i):
        return self._crops[i]


# --------------------------------------------------------------------------------------------
# random parameters (per sample)
# --------------------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def _bernoulli(n: int, p: float, device, generator) -> torch.Tensor:
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if p >= 1:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.rand(n, device=device, generator=generator) < p


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], device=None, generator=None,
               attempts: int = 10) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) drawn as ``RandomResizedCrop.get_params`` draws them.

    Up to ``attempts`` tries per sample of area ~ U(scale) x image area and log-aspect ~
    U(log ratio); the first try that fits is kept; samples with no fitting try get torchvision's
    fallback (the whole image, with the aspect ratio clamped to ``ratio``, centred).
    """
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = _uniform(n * attempts, scale[0], scale[1], device, generator) * area
    aspect = torch.exp(_uniform(n * attempts, log_lo, log_hi, device, generator))
    w = torch.round(torch.sqrt(target * aspect)).view(n, attempts)
    h = torch.round(torch.sqrt(target / aspect)).view(n, attempts)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    # fallback box (torchvision's "central crop")
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    rows = torch.arange(n, device=device)
    pick = first.clamp(min=0)
    hh = torch.where(first >= 0, h[rows, pick], torch.full((n,), float(fh), device=device))
    ww = torch.where(first >= 0, w[rows, pick], torch.full((n,), float(fw), device=device))
    # torch.randint(0, H - h + 1) per sample: floor(U * (H - h + 1))
    u = torch.rand(2, n, device=device, generator=generator)
    top = torch.floor(u[0] * (height - hh + 1)).clamp(max=height - hh)
    left = torch.floor(u[1] * (width - ww + 1)).clamp(max=width - ww)
    top = torch.where(first >= 0, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(first >= 0, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, hh, ww], dim=1)


# --------------------------------------------------------------------------------------------
# colour operations on float images in [0, 1], shape (n, 3, H, W), per-sample factors (n,)
# --------------------------------------------------------------------------------------------
def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma as torchvision's rgb_to_grayscale: (n, 1, H, W)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV for (n, 3, H, W) in [0, 1], the formulas of torchvision's ``_rgb2hsv``."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB, the inverse of :func:`rgb_to_hsv` (torchvision's ``_hsv2rgb``)."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector table: which of (v, q, p, t) feeds r, g, b in each of the six sectors
    r = torch.stack((v, q, p, p, t, v), 1).gather(1, i.unsqueeze(1))
    g = torch.stack((t, v, v, q, p, p), 1).gather(1, i.unsqueeze(1))
    b = torch.stack((p, p, t, v, v, q), 1).gather(1, i.unsqueeze(1))
    return torch.cat((r, g, b), dim=1)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma and reflect padding (torchvision's)."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (pos.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (n, K)
    k = k.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    pad = kernel_size // 2
    y = x.reshape(1, n * c, h, w)
    y = torch.nn.functional.pad(y, (pad, pad, pad, pad), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = torch.nn.functional.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def jitter_factors(n: int, g: CropGroup, device=None, generator=None) -> torch.Tensor:
    """(n, 4) brightness, contrast, saturation, hue factors as ``ColorJitter.get_params``."""
    b, c, s, h = g.brightness, g.contrast, g.saturation, g.hue
    return torch.stack([
        _uniform(n, max(0.0, 1 - b), 1 + b, device, generator),
        _uniform(n, max(0.0, 1 - c), 1 + c, device, generator),
        _uniform(n, max(0.0, 1 - s), 1 + s, device, generator),
        _uniform(n, -h, h, device, generator),
    ], dim=1)


def _identity_factor(op: int) -> float:
    return 0.0 if op == 3 else 1.0


def color_jitter(x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor,
                 order: torch.Tensor, strengths: tuple[float, float, float, float]
                 ) -> torch.Tensor:
    """ColorJitter on the samples where ``apply``; each sample's 4 ops in its own ``order``.

    Ops whose strength is 0 are skipped, as torchvision skips them (hue 0 is the identity).
    """
    for pos in range(4):
        for op in range(4):
            if strengths[op] == 0:
                continue
            sel = (apply & (order[:, pos] == op)).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            x[sel] = _JITTER_OPS[op](x[sel], factors[sel, op])
    return x


# --------------------------------------------------------------------------------------------
# the entry points
# --------------------------------------------------------------------------------------------
def _kernel_size(g: CropGroup) -> int:
    k = max(3, int(round(g.blur_kernel_frac * g.size)))
    return k if k % 2 == 1 else k + 1


def augment_group(x: torch.Tensor, g: CropGroup, generator=None) -> torch.Tensor:
    """``g.count`` augmented crops of every image of float (B, 3, H, W) x; (count*B, 3, s, s)."""
    from torchvision.ops import roi_align

    bsz, _, height, width = x.shape
    n = g.count * bsz
    dev = x.device
    boxes = crop_boxes(n, height, width, g.scale, g.ratio, dev, generator)
    top, left, hh, ww = boxes.unbind(1)
    owner = torch.arange(bsz, device=dev, dtype=x.dtype).repeat(g.count)
    rois = torch.stack([owner, left, top, left + ww, top + hh], dim=1).to(x.dtype)
    out = roi_align(x, rois, output_size=(g.size, g.size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    flip = _bernoulli(n, g.flip_p, dev, generator)
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    strengths = (g.brightness, g.contrast, g.saturation, g.hue)
    if g.jitter_p > 0 and any(strengths):
        apply = _bernoulli(n, g.jitter_p, dev, generator)
        factors = jitter_factors(n, g, dev, generator)
        order = torch.argsort(torch.rand(n, 4, device=dev, generator=generator), dim=1)
        out = color_jitter(out, apply, factors, order, strengths)
    if g.grayscale_p > 0:
        gray = _bernoulli(n, g.grayscale_p, dev, generator)
        out = torch.where(gray.view(-1, 1, 1, 1), _gray(out).expand_as(out), out)
    if g.blur_p > 0:
        sel = _bernoulli(n, g.blur_p, dev, generator).nonzero().squeeze(1)
        sigma = _uniform(n, g.blur_sigma[0], g.blur_sigma[1], dev, generator)
        if sel.numel():
            out[sel] = gaussian_blur(out[sel], sigma[sel], _kernel_size(g))
    if g.solarize_p > 0:
        sol = _bernoulli(n, g.solarize_p, dev, generator)
        out = torch.where(sol.view(-1, 1, 1, 1), solarize(out), out)
    return out


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def make_views(images: torch.Tensor, spec: ViewSpec,
               generator: torch.Generator | None = None) -> Views:
    """Augmented crops of a uint8 (B, C, H, W) batch, on the batch's device.

    Returns :class:`Views` with one float32 tensor per crop group, normalised, crop-major.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {images.dtype} "
                         f"{tuple(images.shape)}")
    x = images.float().div_(255)
    groups = [_normalise(augment_group(x, g, generator), spec.mean, spec.std)
              for g in spec.groups]
    return Views(groups, [g.count for g in spec.groups])


@torch.no_grad()
def eval_view(images: torch.Tensor, size: int, mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    """Deterministic evaluation view: shorter side resized to ``size``, centre crop, normalised."""
    x = images.float().div_(255)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear",
                                            align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    return _normalise(x, mean, std)


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------
def _stats(image_size: int):
    return (CIFAR_MEAN, CIFAR_STD) if image_size <= 64 else (IMAGENET_MEAN, IMAGENET_STD)


def swav_views(image_size: int, n_local: int = 4, local_size: int | None = None,
               global_scale=(0.14, 1.0), local_scale=(0.05, 0.14)) -> ViewSpec:
    """SwAV multi-crop (Sec. 3.2): 2 global crops + ``n_local`` small ones.

    ImageNet sizes are 224 + 96 (App. A.1); for small images the local crop is half the size
    (32 -> 16). Jitter strength 0.8 with hue 0.2, grayscale 0.2, blur 0.5 on 224-px crops
    only (blur is skipped on small images, as the CIFAR recipes do).
    """
    mean, std = _stats(image_size)
    local_size = local_size or (96 if image_size >= 192 else max(8, image_size // 2))
    blur = 0.5 if image_size >= 96 else 0.0
    common = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, jitter_p=0.8,
                  grayscale_p=0.2, blur_p=blur)
    groups = [CropGroup(count=2, size=image_size, scale=global_scale, **common)]
    if n_local > 0:
        groups.append(CropGroup(count=n_local, size=local_size, scale=local_scale, **common))
    return ViewSpec(groups=groups, mean=mean, std=std)


def simclr_views(image_size: int) -> ViewSpec:
    """SimCLR (Chen et al. 2020, App. A): crop (0.08, 1), colour jitter p=0.8 of strength 1.0
    (0.8, 0.8, 0.8, 0.2) on ImageNet and 0.5 on CIFAR (App. B.9), gray 0.2, blur 0.5 at ImageNet
    size (none on CIFAR, as in the paper's CIFAR experiments)."""
    mean, std = _stats(image_size)
    s = 1.0 if image_size >= 96 else 0.5
    g = CropGroup(count=2, size=image_size, scale=(0.08, 1.0), brightness=0.8 * s,
                  contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, jitter_p=0.8,
                  grayscale_p=0.2, blur_p=0.5 if image_size >= 96 else 0.0)
    return ViewSpec(groups=[g], mean=mean, std=std)


def mocov2_views(image_size: int) -> ViewSpec:
    """MoCo v2 (Chen et al. 2020b): crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p=0.8,
    gray 0.2, blur p=0.5 sigma (0.1, 2) at ImageNet size."""
    mean, std = _stats(image_size)
    g = CropGroup(count=2, size=image_size, scale=(0.2, 1.0), brightness=0.4, contrast=0.4,
                  saturation=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
                  blur_p=0.5 if image_size >= 96 else 0.0)
    return ViewSpec(groups=[g], mean=mean, std=std)


PRESETS = {
    "swav": swav_views,
    "swav_2crops": lambda image_size: swav_views(image_size, n_local=0),
    "swav_imagenet": lambda image_size=224: swav_views(224, n_local=6),
    "simclr": simclr_views,
    "mocov2": mocov2_views,
}


def preset(name: str, image_size: int) -> ViewSpec:
    """A named view spec for images of ``image_size`` pixels."""
    if name not in PRESETS:
        from ssl_zoo.errors import ConfigError, suggest

        raise ConfigError(suggest(name, PRESETS, "view preset"))
    return PRESETS[name](image_size)
