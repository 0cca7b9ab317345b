"""Cutting boxes out of a float batch and resizing them in one ``roi_align`` call.

Crops are cut from the original image (or its canvas) and resized once with
``torchvision.ops.roi_align`` (bilinear, ``aligned=True``; when a crop shrinks it averages
ceil(scale) x ceil(scale) samples per output pixel, which acts as the anti-aliasing filter).
Interpolation near a crop's border reads the pixels just outside it, where torchvision clamps
to the crop's edge. A horizontal flip costs nothing: flipped crops are cut, mirrored, from a
flipped copy of the (small) source batch, which gives exactly the mirrored output.
"""

from __future__ import annotations

import torch

from ssl_zoo.data.views.params import GroupParams


def _rois(owner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``roi_align`` boxes (n, 5): owner, x1, y1, x2, y2 from (top, left, h, w) boxes."""
    top, left, h, w = boxes.unbind(1)
    return torch.stack([owner, left, top, left + w, top + h], dim=1)


def _resize_rois(source: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    from torchvision.ops import roi_align  # torchvision loads only when crops are made

    return roi_align(source, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def roi_resize(source: torch.Tensor, owner: torch.Tensor, boxes: torch.Tensor, size: int
               ) -> torch.Tensor:
    """(n, C, size, size): box ``boxes[i]`` (top, left, h, w) of image ``owner[i]`` of
    ``source`` (N, C, H, W), bilinear with averaging when shrinking; ``owner`` (n,) float."""
    return _resize_rois(source, _rois(owner, boxes), size)


def _crop_rois(source: torch.Tensor, batch: int, params: GroupParams) -> torch.Tensor:
    """The ``roi_align`` boxes of a group's crops in ``source`` = [images; mirrored images]."""
    width = source.shape[-1]
    n = params.boxes.shape[0]
    top, left, h, w = params.boxes.to(source.dtype).unbind(1)
    owner = torch.arange(n, device=source.device, dtype=source.dtype).remainder_(batch)
    # a crop of the mirrored image at the mirrored place is the mirrored crop
    left = torch.where(params.flip, width - left - w, left)
    owner = owner + params.flip.to(source.dtype) * batch
    return _rois(owner, torch.stack([top, left, h, w], dim=1))


def crop_resize(source: torch.Tensor, batch: int, params: GroupParams, size: int
                ) -> torch.Tensor:
    """Crops of ``source`` = [images; mirrored images] (2B, C, H, W) resized to ``size``."""
    return _resize_rois(source, _crop_rois(source, batch, params), size)


def crop_resize_groups(source: torch.Tensor, batch: int, params: list[GroupParams], size: int
                       ) -> torch.Tensor:
    """The crops of several groups of one ``size``, group after group in one tensor, cut and
    resized in one ``roi_align`` call (each crop as :func:`crop_resize` makes it)."""
    if len(params) == 1:
        return crop_resize(source, batch, params[0], size)
    rois = torch.cat([_crop_rois(source, batch, p) for p in params])
    return _resize_rois(source, rois, size)
