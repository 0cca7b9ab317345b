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


def roi_resize(source: torch.Tensor, owner: torch.Tensor, boxes: torch.Tensor, size: int
               ) -> torch.Tensor:
    """(n, C, size, size): box ``boxes[i]`` (top, left, h, w) of image ``owner[i]`` of
    ``source`` (N, C, H, W), bilinear with averaging when shrinking; ``owner`` (n,) float."""
    from torchvision.ops import roi_align  # torchvision loads only when crops are made

    top, left, h, w = boxes.unbind(1)
    rois = torch.stack([owner, left, top, left + w, top + h], dim=1)
    return roi_align(source, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def crop_resize(source: torch.Tensor, batch: int, params: GroupParams, size: int
                ) -> torch.Tensor:
    """Crops of ``source`` = [images; mirrored images] (2B, C, H, W) resized to ``size``."""
    width = source.shape[-1]
    n = params.boxes.shape[0]
    top, left, h, w = params.boxes.to(source.dtype).unbind(1)
    owner = torch.arange(n, device=source.device, dtype=source.dtype).remainder_(batch)
    # a crop of the mirrored image at the mirrored place is the mirrored crop
    left = torch.where(params.flip, width - left - w, left)
    owner = owner + params.flip.to(source.dtype) * batch
    return roi_resize(source, owner, torch.stack([top, left, h, w], dim=1), size)
