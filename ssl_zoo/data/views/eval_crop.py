"""The deterministic evaluation view: torchvision's ``Resize`` + ``CenterCrop`` + normalise.

Features for kNN and the probes are computed on this view (docs/design.md, "Data flow"). For a
batch of canvases the same region of each original is cut from its canvas (:func:`eval_boxes`),
as the training crops are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_zoo.data.views.boxes import canvas_boxes
from ssl_zoo.data.views.checks import check_batch, check_sizes
from ssl_zoo.data.views.crop import roi_resize
from ssl_zoo.data.views.normalise import normalise_
from ssl_zoo.data.views.spec import CIFAR_MEAN, CIFAR_STD

EVAL_CROP_FRACTION = 0.875
"""Evaluation centre crop as a fraction of the resized shorter side (224 of 256)."""


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


def _resize_centre_crop(x: torch.Tensor, size: int, crop_fraction: float) -> torch.Tensor:
    """``Resize(r)`` (bilinear, anti-aliased; r as :func:`eval_view`) then ``CenterCrop(size)``
    of a float batch; square images of ``size`` pass unchanged."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    short, long = min(h, w), max(h, w)
    target = int(size / crop_fraction) if short > size else size
    if short != target:
        new_long = int(target * long / short)
        nh, nw = (target, new_long) if h <= w else (new_long, target)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=True)
        h, w = nh, nw
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size].contiguous()


@torch.no_grad()
def eval_view(images: torch.Tensor, size: int, mean=CIFAR_MEAN, std=CIFAR_STD,
              crop_fraction: float = EVAL_CROP_FRACTION,
              sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic evaluation view of a uint8 (B, 3, H, W) batch, float32 normalised.

    Square images of ``size`` pass unchanged. Otherwise the usual ImageNet protocol:
    torchvision ``Resize(r)`` (shorter side to r, bilinear, anti-aliased) with
    r = int(size / crop_fraction) for images larger than ``size`` (256 for 224) and r = size
    for smaller ones, then ``CenterCrop(size)``.

    With ``sizes`` (B, 2) (canvases of originals of those sizes, as ``make_views``) the
    same region of each original (:func:`eval_boxes`) is cut from its canvas and resized to
    ``size`` with ``roi_align`` (anti-aliased by averaging, as the training crops).
    """
    check_batch(images)
    check_sizes(sizes, images.shape[0])
    x = images.float().div_(255)
    if sizes is None:
        return normalise_(_resize_centre_crop(x, size, crop_fraction), mean, std)
    boxes = canvas_boxes(eval_boxes(sizes, size, crop_fraction), sizes, x.shape[-2],
                         x.shape[-1])
    owner = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
    return normalise_(roi_resize(x, owner, boxes, size), mean, std)
