"""Batched multi-crop views made on the device for a whole uint8 batch at once.

Per-image PIL augmentation of 6-8 crops is the known bottleneck of multi-crop training (SwAV,
Caron et al. 2020, Sec. 3.2). Here every random parameter is still drawn per sample, from the
same distributions as torchvision's per-image transforms (RandomResizedCrop with its 10 tries and
central fallback, RandomHorizontalFlip, ColorJitter with its 4 ops in a random order per sample,
RandomGrayscale, GaussianBlur with a uniform sigma, RandomSolarize at 128), but each operation
runs once for the whole batch as tensor code on the batch's device.

How it is made fast (and where it differs from a PIL pipeline):

* uint8 -> float32 in [0, 1] once; no rounding back to uint8 between operations.
* crops are cut from the original image and resized once with ``torchvision.ops.roi_align``
  (bilinear, ``aligned=True``; when a crop shrinks it averages ceil(scale) x ceil(scale)
  samples per output pixel, which acts as the anti-aliasing filter). Interpolation near a crop's
  border reads the pixels just outside it, where torchvision clamps to the crop's edge.
* a horizontal flip costs nothing: flipped crops are cut, mirrored, from a flipped copy of the
  (small) source batch, which gives exactly the mirrored output.
* brightness, contrast and saturation are all ``clamp(a*x + b*gray(x) + c*mean(gray(x)))``, so
  at each of the 4 jitter positions one blend with per-sample (a, b, c) does all three for the
  whole batch; the hue shift is a closed-form HSV rotation (no HSV image is built) run only on
  the quarter of the samples whose hue shift sits at that position.
* each sample's Gaussian kernel reaches 4 of its own sigma either side (or the requested size,
  if smaller); the weights beyond are below exp(-8) of the centre and hold < 1e-4 of the mass.
  The blurred samples go through one call with the group's largest kernel, each sample's
  Gaussian zero beyond its own radius.
* nothing is read back from the device (no ``nonzero``, no data-dependent shapes), so a GPU
  never waits for the host: per-sample choices are masks, and the two choices that need a
  subset (hue position, blur) are drawn balanced over the batch, a fixed number of samples
  each, chosen at random (:func:`draw_params`). Each sample keeps torchvision's
  probabilities; samples of one batch are no longer independent in those two choices.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ssl_zoo.data.stats import CIFAR10, IMAGENET

CIFAR_MEAN, CIFAR_STD = CIFAR10
IMAGENET_MEAN, IMAGENET_STD = IMAGENET

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
"""ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``."""
SOLARIZE_THRESHOLD = 128 / 255
"""Pixels at or above this value are inverted (PIL's / torchvision's threshold 128 of 255)."""
EVAL_CROP_FRACTION = 0.875
"""Evaluation centre crop as a fraction of the resized shorter side (224 of 256)."""
CROP_ATTEMPTS = 10
"""Tries of RandomResizedCrop before its central fallback (torchvision's 10)."""
BLUR_TRUNCATE_SIGMAS = 4.0
"""Gaussian kernels reach at most this many sigma either side of the centre."""


@dataclass
class CropGroup:
    """``count`` crops of ``size`` x ``size`` pixels sharing one augmentation recipe."""

    count: int = 2
    """Crops of every image in this group."""
    size: int = 32
    """Output side in pixels."""
    scale: tuple[float, float] = (0.14, 1.0)
    """RandomResizedCrop area range, as a fraction of the image area."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop aspect-ratio (width / height) range, drawn log-uniform."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    jitter_p: float = 0.8
    """Probability of colour jitter (all four ops, in a random order)."""
    brightness: float = 0.4
    """Brightness factor drawn from U(max(0, 1 - b), 1 + b); 0 turns it off."""
    contrast: float = 0.4
    """Contrast factor drawn from U(max(0, 1 - c), 1 + c); 0 turns it off."""
    saturation: float = 0.4
    """Saturation factor drawn from U(max(0, 1 - s), 1 + s); 0 turns it off."""
    hue: float = 0.1
    """Hue shift drawn from U(-h, h) in turns (0.5 = half the colour wheel); 0 turns it off."""
    grayscale_p: float = 0.2
    """Probability of converting to grayscale (after jitter)."""
    blur_p: float = 0.0
    """Probability of a Gaussian blur (after grayscale)."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Blur standard deviation range in output pixels, drawn uniform."""
    solarize_p: float = 0.0
    """Probability of solarisation (last)."""
    blur_kernel_frac: float = 0.1
    """Gaussian kernel size as a fraction of the crop size (SimCLR: 10%), made odd; 0: no such
    cap, only the 4-sigma cut (the PIL blur, radius = sigma, of the MoCo v2 and SwAV code)."""


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

    def to(self, device: torch.device, non_blocking: bool = False) -> Views:
        """The same crops (and index) on ``device``."""
        index = None if self.index is None else self.index.to(device, non_blocking=non_blocking)
        return Views([g.to(device, non_blocking=non_blocking) for g in self.groups],
                     self.counts, index)

    def __reduce__(self):  # sent between processes as its groups (the crops are slices)
        return Views, (self.groups, self.counts, self.index)

    def __len__(self) -> int:
        return len(self._crops)

    def __getitem__(self, i):
        return self._crops[i]


# --------------------------------------------------------------------------------------------
# random parameters, drawn per sample
# --------------------------------------------------------------------------------------------
def _rand(shape: tuple[int, ...], device: torch.device, generator) -> torch.Tensor:
    """U[0, 1) float32 drawn with ``generator`` on its own device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, device=gen_device, generator=generator).to(device)


def boxes_from_uniforms(u_area: torch.Tensor, u_log_ratio: torch.Tensor, u_top: torch.Tensor,
                        u_left: torch.Tensor, height: int | torch.Tensor,
                        width: int | torch.Tensor, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) by ``RandomResizedCrop.get_params`` from uniforms.

    ``u_area`` and ``u_log_ratio`` are (n, attempts) U[0, 1): try t has area ~ U(scale) x image
    area and log-aspect ~ U(log ratio); the first try that fits is kept and placed at
    top ~ U{0..H-h}, left ~ U{0..W-w} (from ``u_top``, ``u_left``); samples with no fitting try
    get torchvision's fallback, the central crop of the whole image with its aspect clamped.
    ``height`` and ``width`` are one image size (ints) or each sample's own (n,) tensors (the
    original size of a real-size image); then the fallback's cases are chosen per sample with
    ``torch.where``, nothing read back from the device.
    """
    per_sample = isinstance(height, torch.Tensor)
    if per_sample:
        height = height.to(u_area.device, torch.float32)
        width = width.to(u_area.device, torch.float32)
        area = (height * width).unsqueeze(1)
        hh, ww = height.unsqueeze(1), width.unsqueeze(1)
    else:
        area = float(height * width)
        hh, ww = height, width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = (u_area * (scale[1] - scale[0]) + scale[0]) * area
    aspect = torch.exp(u_log_ratio * (log_hi - log_lo) + log_lo)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= ww) & (h > 0) & (h <= hh)
    found = ok.any(1)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # index of the first True
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    # torch.randint(0, H - h + 1) drawn as floor(U * (H - h + 1))
    top = torch.minimum(torch.floor(u_top * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u_left * (width - w + 1)), width - w)
    if per_sample:
        fallback = fallback_boxes(height, width, ratio).unbind(1)
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            fw, fh = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            fh, fw = height, int(round(height * ratio[1]))
        else:
            fw, fh = width, height
        fallback = tuple(float(f) for f in ((height - fh) // 2, (width - fw) // 2, fh, fw))
    return torch.stack([torch.where(found, v, f)
                        for v, f in zip((top, left, h, w), fallback)], dim=1)


def fallback_boxes(height: torch.Tensor, width: torch.Tensor, ratio: tuple[float, float]
                   ) -> torch.Tensor:
    """(n, 4) float32 boxes of ``RandomResizedCrop``'s fallback for (n,) image sizes: the whole
    image, its aspect clamped to ``ratio``, centred; computed in float64 as torchvision's Python
    floats (round half to even, floor division), one ``torch.where`` per case."""
    h, w = height.double(), width.double()
    in_ratio = w / h
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fh = torch.where(narrow, torch.round(w / ratio[0]), h)
    fw = torch.where(wide, torch.round(h * ratio[1]), w)
    top = torch.div(h - fh, 2, rounding_mode="floor")
    left = torch.div(w - fw, 2, rounding_mode="floor")
    return torch.stack([top, left, fh, fw], dim=1).float()


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], device=None, generator=None,
               attempts: int = CROP_ATTEMPTS) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w), each drawn as ``RandomResizedCrop.get_params`` draws one."""
    device = torch.device(device or "cpu")
    u = _rand((n, 2 * attempts + 2), device, generator)
    return boxes_from_uniforms(u[:, :attempts], u[:, attempts:2 * attempts], u[:, -2], u[:, -1],
                               height, width, scale, ratio)


def jitter_factors(u: torch.Tensor, g: CropGroup) -> torch.Tensor:
    """(n, 4) brightness, contrast, saturation, hue factors from (n, 4) U[0, 1), as
    ``ColorJitter.get_params`` draws them (factor ranges (max(0, 1 - s), 1 + s) and (-h, h))."""
    lo = (max(0.0, 1 - g.brightness), max(0.0, 1 - g.contrast), max(0.0, 1 - g.saturation),
          -g.hue)
    hi = (1 + g.brightness, 1 + g.contrast, 1 + g.saturation, g.hue)
    return torch.stack([u[:, i] * (hi[i] - lo[i]) + lo[i] for i in range(4)], dim=1)


@dataclass
class GroupParams:
    """Every random choice for the ``n`` = count x B crops of one group (row k*B + b)."""

    boxes: torch.Tensor
    """(n, 4) top, left, height, width in source pixels."""
    flip: torch.Tensor
    """(n,) bool."""
    jitter_order: torch.Tensor
    """(n, 4) int64: op (0 brightness, 1 contrast, 2 saturation, 3 hue) at each position, or -1
    in every position where jitter is not applied."""
    jitter_factors: torch.Tensor
    """(n, 4) float32 factors of the four ops."""
    grayscale: torch.Tensor
    """(n,) bool."""
    blur: torch.Tensor
    """(n,) bool."""
    blur_sigma: torch.Tensor
    """(n,) float32."""
    solarize: torch.Tensor
    """(n,) bool."""
    hue_subsets: list[torch.Tensor] | None = None
    """Per jitter position, the rows whose hue shift falls there (sizes known on the host)."""
    blur_index: torch.Tensor | None = None
    """The rows that are blurred (size known on the host)."""


_COLUMNS = 2 * CROP_ATTEMPTS + 2 + 1 + 1 + 4 + 3 + 1 + 1 + 1 + 1 + 1  # uniforms per sample


def balanced_labels(keys: torch.Tensor, counts: Sequence[int]
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Labels for ``len(keys)`` samples, exactly ``counts[j]`` of them label j, which ones a
    uniform random choice (the argsort of the i.i.d. ``keys`` is a random permutation).

    Returns the (n,) labels and, for each label, the indices of its samples: the sizes are known
    on the host, so later steps work on fixed-size subsets without reading the device.
    """
    perm = torch.argsort(keys)
    bounds = list(itertools.accumulate(counts))[:-1]
    rank = torch.arange(len(keys), device=keys.device)
    sorted_labels = torch.zeros_like(perm)
    for b in bounds:
        sorted_labels += rank >= b
    labels = torch.empty_like(perm).scatter_(0, perm, sorted_labels)
    starts = [0, *bounds]
    return labels, [perm[a:a + c] for a, c in zip(starts, counts)]


def draw_params(n: int, height: int | torch.Tensor, width: int | torch.Tensor, g: CropGroup,
                device: torch.device, generator: torch.Generator | None = None) -> GroupParams:
    """All random parameters of ``n`` crops of group ``g``, from one (n, 36) block of U[0, 1).

    ``height`` and ``width``: the image size the boxes are drawn in, one for all (ints) or each
    row's own (n,) tensors (:func:`boxes_from_uniforms`); boxes are in those pixels.

    Columns: 10 area + 10 log-aspect tries, top, left, flip, jitter on/off, 4 jitter factors,
    3 sort keys for the order of brightness, contrast and saturation, a key placing the hue
    shift, grayscale, a key choosing the blurred rows, blur sigma, solarize. Every column is
    drawn whatever the settings, so changing one probability leaves the other choices unchanged.

    Two choices are balanced over the batch rather than independent per sample (stratified
    sampling), so that the rows doing them are fixed-size subsets known on the host: the hue
    shift sits at each of the 4 jitter positions for a quarter of the rows (the others' order is
    a uniform permutation, so every row's op order is uniform over the 24, as
    ``ColorJitter``'s), and round(blur_p * n) rows are blurred. Each row's own probabilities are
    torchvision's (exactly when n is a multiple of 4 and blur_p * n is whole); only the
    dependence between the rows of one batch differs.
    """
    a = CROP_ATTEMPTS
    u = _rand((n, _COLUMNS), device, generator)
    boxes = boxes_from_uniforms(u[:, :a], u[:, a:2 * a], u[:, 2 * a], u[:, 2 * a + 1],
                                height, width, g.scale, g.ratio)
    c = 2 * a + 2
    flip = u[:, c] < g.flip_p
    jitter_on = u[:, c + 1] < g.jitter_p
    factors = jitter_factors(u[:, c + 2:c + 6], g)
    linear_order = torch.argsort(u[:, c + 6:c + 9], dim=1)  # brightness, contrast, saturation
    hue_position, hue_subsets = balanced_labels(u[:, c + 9], [n // 4 + (j < n % 4)
                                                              for j in range(4)])
    pos = torch.arange(4, device=device).view(1, 4)
    hue_at = hue_position.view(-1, 1)
    order = torch.where(pos == hue_at, 3,
                        linear_order.gather(1, (pos - (pos > hue_at).long()).clamp(max=2)))
    order = torch.where(jitter_on.unsqueeze(1), order, -1)
    c += 10
    n_blur = min(n, int(round(g.blur_p * n)))
    blur_label, blur_subsets = balanced_labels(u[:, c + 1], [n - n_blur, n_blur])
    lo, hi = g.blur_sigma
    return GroupParams(
        boxes=boxes, flip=flip, jitter_order=order, jitter_factors=factors,
        grayscale=u[:, c] < g.grayscale_p, blur=blur_label.bool(),
        blur_sigma=u[:, c + 2] * (hi - lo) + lo, solarize=u[:, c + 3] < g.solarize_p,
        hue_subsets=hue_subsets, blur_index=blur_subsets[1],
    )


# --------------------------------------------------------------------------------------------
# colour operations on float images (n, 3, H, W) in [0, 1], per-sample factors (n,)
# --------------------------------------------------------------------------------------------
def _per_sample(f: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    return f.to(x.dtype).view(-1, 1, 1, 1) if isinstance(f, torch.Tensor) else f


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (n, 1, H, W), as torchvision's ``rgb_to_grayscale``."""
    wr, wg, wb = GRAY_WEIGHTS
    return (x[:, 0:1] * wr).add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wb)


def adjust_brightness(x: torch.Tensor, f) -> torch.Tensor:
    """``clamp(f * x)``, torchvision's ``adjust_brightness`` on float images."""
    return (x * _per_sample(f, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f) -> torch.Tensor:
    """Blend with the mean gray level, torchvision's ``adjust_contrast`` on float images."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(f, x)
    return (x * f).add_(mean * (1 - f)).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, f) -> torch.Tensor:
    """Blend with the grayscale image, torchvision's ``adjust_saturation`` on float images."""
    f = _per_sample(f, x)
    return (x * f).add_(rgb_to_grayscale(x) * (1 - f)).clamp_(0, 1)


def _hue_sextant(x: torch.Tensor, maxc: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """HSV hue in sextants, in [-1, 5] (6 = one turn), torchvision's ``_rgb2hsv`` case rule:
    max in red, else in green, else in blue; gray pixels (chroma 0) get 0."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    h = torch.where(maxc == g, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4))
    h = torch.where(maxc == r, g - b, h)
    return h.div_(chroma.clamp(min=1e-12))


_SEXTANT_OFFSETS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def adjust_hue(x: torch.Tensor, f) -> torch.Tensor:
    """Rotate the HSV hue by ``f`` turns, as torchvision's ``adjust_hue`` (RGB -> HSV, shift,
    HSV -> RGB), in closed form: channel k is ``max - chroma * clamp(2 - |s_k - 2|, 0, 1)``
    with ``s_k = (hue_sextant + 6 f + (5, 3, 1)_k) mod 6`` (the standard piecewise-linear
    hue-to-RGB map); value (max) and chroma (max - min) are kept, gray pixels stay gray."""
    maxc = x.amax(1, keepdim=True)
    minc = x.amin(1, keepdim=True)
    chroma = maxc - minc
    h = _hue_sextant(x, maxc, chroma)
    h.add_(_per_sample(f, x) * 6)
    key = (x.device, x.dtype)
    if key not in _SEXTANT_OFFSETS:
        _SEXTANT_OFFSETS[key] = torch.tensor([5.0, 3.0, 1.0], device=x.device,
                                             dtype=x.dtype).view(1, 3, 1, 1)
    s = (h + _SEXTANT_OFFSETS[key]).remainder_(6)
    # max - chroma * clamp(2 - |s - 2|, 0, 1) written as min + chroma * clamp(|s - 2| - 1, 0, 1)
    t = s.sub_(2).abs_().sub_(1).clamp_(0, 1)
    return torch.addcmul(minc, chroma, t)


def solarize(x: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    """Invert pixels at or above ``threshold``, torchvision's ``solarize`` on float images."""
    return torch.where(x >= threshold, 1.0 - x, x)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(n, K) normalised 1-D Gaussians, torchvision's ``_get_gaussian_kernel1d`` per sigma."""
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (pos.view(1, -1) / sigma.view(-1, 1).float()) ** 2)
    return pdf / pdf.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample and reflect padding, as torchvision's
    ``gaussian_blur`` (its 2-D kernel is the outer product of two of these 1-D kernels)."""
    kernel_size = min(kernel_size, 2 * min(x.shape[-2:]) - 1)  # reflect padding needs pad < side
    return separable_blur(x, gaussian_kernels(sigma, kernel_size).to(x.dtype))


def color_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor,
                 strengths: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 hue_subsets: list[torch.Tensor] | None = None) -> torch.Tensor:
    """ColorJitter in place, each sample's 4 ops in its own order (torchvision's random order).

    ``order`` (n, 4): op index per position (0 brightness, 1 contrast, 2 saturation, 3 hue;
    -1 skips); ``factors`` (n, 4). An op whose strength is 0 is skipped, as torchvision skips
    it. At each position one blend ``clamp(a x + b gray(x) + c mean(gray(x)))`` does the three
    linear ops for every sample (identity a=1, b=c=0 for the others), then the hue shift runs
    on ``hue_subsets[pos]`` (rows whose hue may sit at that position, of sizes known on the
    host; :func:`draw_params` makes them) or, without them, on the whole batch, and is kept
    where the sample's op there is hue. Every choice is a mask or a fixed-size subset, so
    nothing is read back from the device.
    """
    factors = factors.to(x.dtype)
    for op_index, strength in enumerate(strengths):
        if strength == 0:
            order = torch.where(order == op_index, -1, order)
    has_linear = any(strengths[:3])
    has_gray_term = strengths[1] != 0 or strengths[2] != 0
    for pos in range(4):
        op = order[:, pos]
        f = factors.gather(1, op.clamp(min=0).unsqueeze(1)).squeeze(1)
        if has_linear:
            linear = (op >= 0) & (op <= 2)
            a = torch.where(linear, f, 1.0).view(-1, 1, 1, 1)
            if has_gray_term:
                b = torch.where(op == 2, 1 - f, 0.0)
                c = torch.where(op == 1, 1 - f, 0.0)
                gray = rgb_to_grayscale(x)
                mean_gray = gray.mean(dim=(1, 2, 3))
                term = gray.mul_(b.view(-1, 1, 1, 1)).add_((c * mean_gray).view(-1, 1, 1, 1))
                torch.addcmul(term, x, a, out=x)  # x = a x + term
            else:
                x.mul_(a)
            x.clamp_(0, 1)
        if strengths[3] != 0 and hue_subsets is None:
            hue = (op == 3).view(-1, 1, 1, 1)
            x.copy_(torch.where(hue, adjust_hue(x, f), x))
        elif strengths[3] != 0 and hue_subsets[pos].numel():
            rows = hue_subsets[pos]
            xs = x.index_select(0, rows)
            hue = (op.index_select(0, rows) == 3).view(-1, 1, 1, 1)
            shifted = adjust_hue(xs, f.index_select(0, rows))
            x.index_copy_(0, rows, torch.where(hue, shifted, xs))
    return x


# --------------------------------------------------------------------------------------------
# the entry points
# --------------------------------------------------------------------------------------------
def blur_kernel_size(g: CropGroup) -> int:
    """Largest odd kernel side: ``blur_kernel_frac`` of the crop (SimCLR's 10%; 0: no cap), cut
    at 4 sigma_max."""
    cut = 2 * math.ceil(BLUR_TRUNCATE_SIGMAS * g.blur_sigma[1]) + 1
    if g.blur_kernel_frac <= 0:
        return cut
    k = max(3, int(round(g.blur_kernel_frac * g.size)))
    k = k if k % 2 == 1 else k + 1
    return min(k, cut)


def blur_radii(sigma: torch.Tensor, max_kernel_size: int) -> torch.Tensor:
    """Per-sample kernel half-width: ceil(4 sigma), at most the group's kernel allows."""
    radius = torch.ceil(sigma * BLUR_TRUNCATE_SIGMAS).clamp_(min=1, max=max_kernel_size // 2)
    return radius.long()


def _blur_(x: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor, max_kernel_size: int,
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian blur in place of the rows where ``mask``, each with its own sigma, in one call.

    Every row is convolved with a kernel of the group's largest size; a row's Gaussian has
    weight only within its own radius ceil(4 sigma) (zeros beyond, normalised over its support,
    so it equals a blur with that smaller kernel: reflect padding mirrors the same pixels within
    the radius), and rows without blur get the identity kernel. With ``rows`` (the indices
    where ``mask``, of a size known on the host) only those rows are convolved.
    """
    if rows is not None:
        xs = x.index_select(0, rows)
        keep = torch.ones(rows.shape[0], dtype=torch.bool, device=x.device)
        return x.index_copy_(0, rows, _blur_(xs, keep, sigma.index_select(0, rows),
                                             max_kernel_size))
    _, _, h, w = x.shape
    size = min(max_kernel_size, 2 * min(h, w) - 1)  # reflect padding needs pad < side
    half = size // 2
    radius = torch.where(mask, blur_radii(sigma, size), 0)
    pos = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32).view(1, -1)
    inside = pos.abs() <= radius.view(-1, 1)
    weights = torch.where(inside, torch.exp(-0.5 * (pos / sigma.float().view(-1, 1)) ** 2), 0.0)
    kernels = weights / weights.sum(1, keepdim=True)
    return x.copy_(separable_blur(x, kernels.to(x.dtype)))


def separable_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` (n, c, H, W) convolved with its own 1-D kernel (n, K), K odd, along
    both axes, with reflect padding (torchvision's ``gaussian_blur`` with the 2-D kernel that
    is the outer product of the 1-D one)."""
    n, c, h, w = x.shape
    size = kernels.shape[1]
    pad = size // 2
    k = kernels.repeat_interleave(c, dim=0, output_size=n * c)
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)


def _crop_resize(source: torch.Tensor, batch: int, params: GroupParams, size: int
                 ) -> torch.Tensor:
    """Crops of ``source`` = [images; mirrored images] (2B, C, H, W) resized to ``size``."""
    from torchvision.ops import roi_align

    width = source.shape[-1]
    n = params.boxes.shape[0]
    top, left, h, w = params.boxes.to(source.dtype).unbind(1)
    owner = torch.arange(n, device=source.device, dtype=source.dtype).remainder_(batch)
    # a crop of the mirrored image at the mirrored place is the mirrored crop
    left = torch.where(params.flip, width - left - w, left)
    owner = owner + params.flip.to(source.dtype) * batch
    rois = torch.stack([owner, left, top, left + w, top + h], dim=1)
    return roi_align(source, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def augment_group(source: torch.Tensor, batch: int, g: CropGroup, params: GroupParams
                  ) -> torch.Tensor:
    """``g.count`` augmented crops of each image, (count*B, 3, s, s) in [0, 1], crop-major.

    ``source`` is the float batch in [0, 1] followed by its mirror image (2B, 3, H, W).
    Order as the usual per-image pipelines: crop, flip, jitter, grayscale, blur, solarize.
    """
    out = _crop_resize(source, batch, params, g.size)
    strengths = (g.brightness, g.contrast, g.saturation, g.hue)
    if g.jitter_p > 0 and any(strengths):
        color_jitter(out, params.jitter_order, params.jitter_factors, strengths,
                     params.hue_subsets)
    if g.grayscale_p > 0:
        gray = params.grayscale.view(-1, 1, 1, 1)
        out.copy_(torch.where(gray, rgb_to_grayscale(out).expand_as(out), out))
    if g.blur_p > 0:
        _blur_(out, params.blur, params.blur_sigma, blur_kernel_size(g), params.blur_index)
    if g.solarize_p > 0:
        out.copy_(torch.where(params.solarize.view(-1, 1, 1, 1), solarize(out), out))
    return out


_CHANNEL_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _normalise_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel in place, as torchvision's ``Normalize``. The statistics
    are copied to the device once per (device, dtype, mean, std), not at every call."""
    key = (x.device, x.dtype, tuple(mean), tuple(std))
    if key not in _CHANNEL_STATS:
        _CHANNEL_STATS[key] = tuple(
            torch.as_tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            for v in (mean, std))
    m, sd = _CHANNEL_STATS[key]
    return x.sub_(m).div_(sd)


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        what = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                else type(images).__name__)
        raise ValueError(f"expected a uint8 (B, 3, H, W) image batch, got {what}")
    if images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of RGB images (B, 3, H, W), got "
                         f"{tuple(images.shape)}")


def _check_sizes(sizes: torch.Tensor | None, batch: int) -> None:
    if sizes is None:
        return
    if not isinstance(sizes, torch.Tensor) or sizes.shape != (batch, 2) \
            or sizes.is_floating_point() or sizes.is_complex():
        what = tuple(sizes.shape) if isinstance(sizes, torch.Tensor) else type(sizes).__name__
        raise ValueError(f"expected original sizes as an integer (B, 2) tensor of (height, "
                         f"width) for a batch of {batch}, got {what}")


def canvas_boxes(boxes: torch.Tensor, sizes: torch.Tensor, height: int, width: int
                 ) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) in original pixels -> the same region of a
    ``height`` x ``width`` canvas holding the whole image stretched (``sizes`` (n, 2): each row's
    original (h, w)). Both axes scale linearly, pixel edges to pixel edges, so roi_align on the
    canvas samples the region the original box covers."""
    s = sizes.to(boxes.dtype)
    sy, sx = height / s[:, 0], width / s[:, 1]
    return boxes * torch.stack([sy, sx, sy, sx], dim=1)


@torch.no_grad()
def make_views(images: torch.Tensor, spec: ViewSpec,
               generator: torch.Generator | None = None,
               sizes: torch.Tensor | None = None) -> Views:
    """Augmented crops of a uint8 (B, 3, H, W) batch, made on the batch's device.

    Every random choice is per sample (:func:`draw_params`), drawn with ``generator`` (on its
    own device; None: the global generator of the batch's device). Returns :class:`Views`
    with one float32 tensor (count*B, 3, size, size) per crop group, normalised, crop-major
    (rows [k*B:(k+1)*B] are crop k of every image); groups of count 0 are left out. Made
    under ``no_grad`` (not ``inference_mode``, so the crops can enter autograd).

    ``sizes`` (B, 2), integer, on the batch's device: each image's original (height, width)
    when the batch holds canvases (the whole image stretched to H x W, as folder and prepared
    sources store it). Crop boxes are then drawn in each image's own geometry, as
    ``RandomResizedCrop`` on the original (area fraction, aspect in original pixels, position,
    fallback), and cut from the canvas at the same place (:func:`canvas_boxes`). None: the
    images are their own originals.
    """
    _check_batch(images)
    batch, _, height, width = images.shape
    _check_sizes(sizes, batch)
    device = images.device
    source = torch.empty((2 * batch, 3, height, width), device=device, dtype=torch.float32)
    torch.div(images, 255, out=source[:batch])
    source[batch:] = source[:batch].flip(-1)
    groups = []
    active = [g for g in spec.groups if g.count > 0]  # a count of 0 leaves a group out
    for g in active:
        if sizes is None:
            params = draw_params(g.count * batch, height, width, g, device, generator)
        else:
            rows = sizes.repeat(g.count, 1)  # row k*B + b is image b
            params = draw_params(g.count * batch, rows[:, 0], rows[:, 1], g, device, generator)
            params.boxes = canvas_boxes(params.boxes, rows, height, width)
        groups.append(_normalise_(augment_group(source, batch, g, params), spec.mean, spec.std))
    return Views(groups, [g.count for g in active])


def skip_view_draws(spec: ViewSpec, batch: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> None:
    """Advance ``generator`` (None: the device's global one) exactly as :func:`make_views` of a
    batch of ``batch`` images advances it (the same draws, nothing else): a step whose crops
    were made elsewhere (in the loader's workers) leaves torch's generator where one that made
    them itself would, so the method's own draws match too."""
    for g in spec.groups:
        if g.count > 0:
            _rand((g.count * batch, _COLUMNS), torch.device(device), generator)


def eval_boxes(sizes: torch.Tensor, size: int, crop_fraction: float = EVAL_CROP_FRACTION
               ) -> torch.Tensor:
    """(n, 4) float32 boxes (top, left, h, w) in original pixels of the evaluation view of
    images of (n, 2) original ``sizes``: the region of the original that torchvision's
    ``Resize(r)`` + ``CenterCrop(size)`` keep (r as :func:`eval_view`), per sample with
    ``torch.where``. Resize maps pixel edges linearly (factor new/old per axis), so the crop's
    (top, left, size, size) in resized pixels is (top, left, size, size) x old/new here."""
    h, w = sizes.double().unbind(1)
    short, long = torch.minimum(h, w), torch.maximum(h, w)
    target = torch.where(short > size, float(int(size / crop_fraction)), float(size))
    resize = short != target
    new_long = torch.where(resize, torch.floor(target * long / short), long)
    new_short = torch.where(resize, target, short)
    nh = torch.where(h <= w, new_short, new_long)
    nw = torch.where(h <= w, new_long, new_short)
    # CenterCrop: int(round((H - size) / 2)), round half to even as Python's round
    top, left = torch.round((nh - size) / 2), torch.round((nw - size) / 2)
    sy, sx = h / nh, w / nw
    return torch.stack([top * sy, left * sx, size * sy, size * sx], dim=1).float()


@torch.no_grad()
def eval_view(images: torch.Tensor, size: int, mean=CIFAR_MEAN, std=CIFAR_STD,
              crop_fraction: float = EVAL_CROP_FRACTION,
              sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic evaluation view of a uint8 (B, 3, H, W) batch, float32 normalised.

    Square images of ``size`` pass unchanged. Otherwise the usual ImageNet protocol:
    torchvision ``Resize(r)`` (shorter side to r, bilinear, anti-aliased) with
    r = int(size / crop_fraction) for images larger than ``size`` (256 for 224) and r = size
    for smaller ones, then ``CenterCrop(size)``.

    With ``sizes`` (B, 2) (canvases of originals of those sizes, as :func:`make_views`) the
    same region of each original (:func:`eval_boxes`) is cut from its canvas and resized to
    ``size`` with ``roi_align`` (anti-aliased by averaging, as the training crops).
    """
    _check_batch(images)
    _check_sizes(sizes, images.shape[0])
    if sizes is not None:
        from torchvision.ops import roi_align

        x = images.float().div_(255)
        boxes = canvas_boxes(eval_boxes(sizes, size, crop_fraction), sizes, x.shape[-2],
                             x.shape[-1])
        top, left, h, w = boxes.unbind(1)
        owner = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
        rois = torch.stack([owner, left, top, left + w, top + h], dim=1)
        x = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)
        return _normalise_(x, mean, std)
    x = images.float().div_(255)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        short, long = min(h, w), max(h, w)
        target = int(size / crop_fraction) if short > size else size
        if short != target:
            new_long = int(target * long / short)
            nh, nw = (target, new_long) if h <= w else (new_long, target)
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)
            h, w = nh, nw
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        x = x[..., top:top + size, left:left + size].contiguous()
    return _normalise_(x, mean, std)


# --------------------------------------------------------------------------------------------
# neutral builders (each method's own recipe lives in its method file)
# --------------------------------------------------------------------------------------------
def distorted_crops(count: int, size: int, scale: tuple[float, float], strength: float,
                    blur_p: float, blur_kernel_frac: float = 0.1) -> CropGroup:
    """``count`` crops of ``size`` px, area ``scale`` of the image, with the colour distortion
    of SimCLR (Chen et al. 2020, App. A) at ``strength`` s: jitter (0.8 s, 0.8 s, 0.8 s,
    0.2 s) with p=0.8, grayscale p=0.2, flip p=0.5; Gaussian blur with p=``blur_p`` (a kernel
    of ``blur_kernel_frac`` of the crop; 0: only cut at 4 sigma)."""
    return CropGroup(count=count, size=size, scale=tuple(scale), brightness=0.8 * strength,
                     contrast=0.8 * strength, saturation=0.8 * strength, hue=0.2 * strength,
                     jitter_p=0.8, grayscale_p=0.2, blur_p=blur_p,
                     blur_kernel_frac=blur_kernel_frac)


def two_crops(size: int, scale: tuple[float, float], strength: float, blur_p: float,
              blur_kernel_frac: float = 0.1) -> ViewSpec:
    """Two crops with the same distortion (SimCLR, MoCo, PCL)."""
    return ViewSpec(groups=[distorted_crops(2, size, scale, strength, blur_p, blur_kernel_frac)])


def multi_crop(global_size: int, local_size: int, n_local: int,
               global_scale: tuple[float, float], local_scale: tuple[float, float],
               strength: float, blur_p: float, blur_kernel_frac: float = 0.1) -> ViewSpec:
    """Multi-crop (SwAV Sec. 3.2): 2 global crops + ``n_local`` low-resolution ones, the same
    distortion on all."""
    groups = [distorted_crops(2, global_size, global_scale, strength, blur_p, blur_kernel_frac)]
    if n_local > 0:
        groups.append(distorted_crops(n_local, local_size, local_scale, strength, blur_p,
                                      blur_kernel_frac))
    return ViewSpec(groups=groups)
