"""Crop geometry: RandomResizedCrop's boxes from uniforms, and boxes moved onto a canvas.

A box is (top, left, height, width) in pixels, float32, one row per crop. Boxes are drawn in
each image's original geometry (as torchvision's ``RandomResizedCrop`` on the original) and,
for a batch of canvases (the whole image stretched to H x W, as folder and prepared sources
store it), mapped onto the canvas (:func:`canvas_boxes`) before cutting (docs/design.md,
"Data flow").
"""

from __future__ import annotations

import math

import torch


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
        fallback = _fallback_box(height, width, ratio)
    return torch.stack([torch.where(found, v, f)
                        for v, f in zip((top, left, h, w), fallback)], dim=1)


def _fallback_box(height: int, width: int, ratio: tuple[float, float]
                  ) -> tuple[float, float, float, float]:
    """``RandomResizedCrop``'s fallback box for one image size, in Python numbers as its own."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    return tuple(float(f) for f in ((height - fh) // 2, (width - fw) // 2, fh, fw))


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


def canvas_boxes(boxes: torch.Tensor, sizes: torch.Tensor, height: int, width: int
                 ) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) in original pixels -> the same region of a
    ``height`` x ``width`` canvas holding the whole image stretched (``sizes`` (n, 2): each row's
    original (h, w)). Both axes scale linearly, pixel edges to pixel edges, so roi_align on the
    canvas samples the region the original box covers."""
    s = sizes.to(boxes.dtype)
    sy, sx = height / s[:, 0], width / s[:, 1]
    return boxes * torch.stack([sy, sx, sy, sx], dim=1)


def source_pixels_per_output(boxes: torch.Tensor, sizes: torch.Tensor, size: int,
                             canvas: int | None = None) -> torch.Tensor:
    """(n, 2) source pixels per output pixel (along height, width) of crops of ``size`` px
    cut at ``boxes`` (top, left, h, w in original pixels) of originals of ``sizes`` (n, 2):
    the box's extent in original pixels over ``size`` (torchvision's ``RandomResizedCrop`` on
    the original; ``canvas`` None), or, cut from a ``canvas`` x ``canvas`` stretched canvas,
    its extent there, but no more than the original's pixels it covers (a canvas larger than
    the original adds none): box x min(canvas / original, 1) / size."""
    extent = boxes[:, 2:4].double()
    if canvas is not None:
        extent = extent * (canvas / sizes.double()).clamp(max=1.0)
    return extent / size
