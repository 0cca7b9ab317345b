"""Colour operations on float images (n, 3, H, W) in [0, 1], one factor per sample.

Each matches torchvision's functional op on float images (the tests compare them). Brightness,
contrast and saturation are all ``clamp(a*x + b*gray(x) + c*mean(gray(x)))``, so at each of the
4 jitter positions one blend with per-sample (a, b, c) does all three for the whole batch; the
hue shift is a closed-form HSV rotation (no HSV image is built) run only on the rows whose hue
shift sits at that position.
"""

from __future__ import annotations

import torch

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
"""ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``."""
SOLARIZE_THRESHOLD = 128 / 255
"""Pixels at or above this value are inverted (PIL's / torchvision's threshold 128 of 255)."""


def _per_sample(f: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    return f.to(x.dtype).view(-1, 1, 1, 1) if isinstance(f, torch.Tensor) else f


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (n, 1, H, W), as torchvision's ``rgb_to_grayscale``."""
    wr, wg, wb = GRAY_WEIGHTS
    return (x[:, 0:1] * wr).add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wb)


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


def color_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor,
                 strengths: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 hue_subsets: list[torch.Tensor] | None = None) -> torch.Tensor:
    """ColorJitter in place, each sample's 4 ops in its own order (torchvision's random order).

    ``order`` (n, 4): op index per position (0 brightness, 1 contrast, 2 saturation, 3 hue;
    -1 skips); ``factors`` (n, 4). An op whose strength is 0 is skipped, as torchvision skips
    it. At each position one blend does the three linear ops for every sample
    (:func:`_blend_linear_`), then the hue shift runs on ``hue_subsets[pos]`` (rows whose hue
    may sit at that position, of sizes known on the host; ``draw_params`` makes them) or,
    without them, on the whole batch, and is kept where the sample's op there is hue. Every
    choice is a mask or a fixed-size subset, so nothing is read back from the device.
    """
    factors = factors.to(x.dtype)
    for op_index, strength in enumerate(strengths):
        if strength == 0:
            order = torch.where(order == op_index, -1, order)
    has_gray_term = strengths[1] != 0 or strengths[2] != 0
    for pos in range(4):
        op = order[:, pos]
        f = factors.gather(1, op.clamp(min=0).unsqueeze(1)).squeeze(1)
        if any(strengths[:3]):
            _blend_linear_(x, op, f, has_gray_term)
        if strengths[3] != 0:
            _shift_hue_(x, op, f, None if hue_subsets is None else hue_subsets[pos])
    return x


def _blend_linear_(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor, gray_term: bool) -> None:
    """Brightness, contrast or saturation, whichever ``op`` (n,) names per row, in place as one
    ``clamp(a x + b gray(x) + c mean(gray(x)))`` (identity a=1, b=c=0 for the other ops).
    ``gray_term`` False (contrast and saturation off): only ``clamp(a x)``."""
    linear = (op >= 0) & (op <= 2)
    a = torch.where(linear, f, 1.0).view(-1, 1, 1, 1)
    if gray_term:
        b = torch.where(op == 2, 1 - f, 0.0)
        c = torch.where(op == 1, 1 - f, 0.0)
        gray = rgb_to_grayscale(x)
        mean_gray = gray.mean(dim=(1, 2, 3))
        term = gray.mul_(b.view(-1, 1, 1, 1)).add_((c * mean_gray).view(-1, 1, 1, 1))
        torch.addcmul(term, x, a, out=x)  # x = a x + term
    else:
        x.mul_(a)
    x.clamp_(0, 1)


def _shift_hue_(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor,
                rows: torch.Tensor | None) -> None:
    """The hue shift in place where ``op`` is 3 (hue): on ``rows`` only (a subset of a size
    known on the host; empty: nothing to do) or, with None, on the whole batch."""
    if rows is None:
        hue = (op == 3).view(-1, 1, 1, 1)
        x.copy_(torch.where(hue, adjust_hue(x, f), x))
    elif rows.numel():
        xs = x.index_select(0, rows)
        hue = (op.index_select(0, rows) == 3).view(-1, 1, 1, 1)
        shifted = adjust_hue(xs, f.index_select(0, rows))
        x.index_copy_(0, rows, torch.where(hue, shifted, xs))
