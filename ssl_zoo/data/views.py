"""Batched multi-crop views made on the device for a whole uint8 batch at once.

SKELETON: the data types below are the stable API. ``make_views`` and ``eval_view`` are filled
in by the batched-views work (issue 4).
"""

from __future__ import annotations

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


def make_views(images: torch.Tensor, spec: ViewSpec,
               generator: torch.Generator | None = None) -> Views:
    """Augmented crops of a uint8 (B, C, H, W) batch, on the batch's device."""
    raise NotImplementedError


def eval_view(images: torch.Tensor, size: int, mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    """Deterministic evaluation view: resize shorter side then centre crop, normalised float."""
    raise NotImplementedError
