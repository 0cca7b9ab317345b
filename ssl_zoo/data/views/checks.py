"""What the views accept: a uint8 RGB batch and, optionally, each image's original size;
anything else is refused with a one-line ``ValueError``."""

from __future__ import annotations

import torch


def check_batch(images: torch.Tensor) -> None:
    """Refuse anything but a non-empty uint8 (B, 3, H, W) tensor."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        what = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                else type(images).__name__)
        raise ValueError(f"expected a uint8 (B, 3, H, W) image batch, got {what}")
    if images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of RGB images (B, 3, H, W), got "
                         f"{tuple(images.shape)}")


def check_sizes(sizes: torch.Tensor | None, batch: int) -> None:
    """Refuse original sizes that are not None or an integer (B, 2) tensor."""
    if sizes is None:
        return
    if not isinstance(sizes, torch.Tensor) or sizes.shape != (batch, 2) \
            or sizes.is_floating_point() or sizes.is_complex():
        what = tuple(sizes.shape) if isinstance(sizes, torch.Tensor) else type(sizes).__name__
        raise ValueError(f"expected original sizes as an integer (B, 2) tensor of (height, "
                         f"width) for a batch of {batch}, got {what}")
