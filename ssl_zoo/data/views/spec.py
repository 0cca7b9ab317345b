"""What a method asks the views for, and what it gets back.

:class:`CropGroup` (crops of one size and one augmentation recipe) and :class:`ViewSpec` (the
groups in order, then the normalisation) are plain dataclasses the run config holds
(``ssl_zoo.config`` imports only this module); :class:`Views` is the batch of crops a method's
``forward`` receives (docs/design.md, "The plug-in contract").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ssl_zoo.data.stats import CIFAR10, IMAGENET

CIFAR_MEAN, CIFAR_STD = CIFAR10
IMAGENET_MEAN, IMAGENET_STD = IMAGENET


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
