"""Per-channel normalisation statistics of a dataset source (what the views normalise with).

Known datasets use their published statistics; an npz file's are measured on (up to 10,000 of)
its training images; folders of photos get ImageNet's, as torchvision's pretrained models do.
"""

from __future__ import annotations

import torch

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

CIFAR10: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
STL10: Stats = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

KNOWN: dict[str, Stats] = {"demo": CIFAR10, "cifar10": CIFAR10, "cifar100": CIFAR100,
                           "stl10": STL10, "folder": IMAGENET, "prepared": IMAGENET}
MEASURED_IMAGES = 10_000
MIN_STD = 1e-3
"""A constant channel's standard deviation is taken as this, so normalising never divides by 0."""


def known_stats(dataset: str) -> Stats | None:
    """The statistics of source ``dataset`` (``cifar10``, ``folder:PATH``...) if they are known
    without looking at the images; None for sources measured from their images (npz)."""
    return KNOWN.get(dataset.partition(":")[0])


@torch.no_grad()
def measured_stats(images: torch.Tensor) -> Stats:
    """Mean and standard deviation per channel of uint8 (N, 3, H, W) images in [0, 1],
    rounded to 4 decimals."""
    x = images.double().div_(255).transpose(0, 1).reshape(3, -1)
    mean = tuple(round(float(v), 4) for v in x.mean(1))
    std = tuple(max(MIN_STD, round(float(v), 4)) for v in x.std(1))
    return mean, std  # type: ignore[return-value]


def source_stats(dataset: str, train) -> Stats:
    """The statistics the views of ``dataset`` use; ``train`` is its training split."""
    known = known_stats(dataset)
    if known is not None:
        return known
    step = max(1, len(train) // MEASURED_IMAGES)  # at most ~MEASURED_IMAGES, evenly spaced
    return measured_stats(train.load(torch.arange(0, len(train), step)))
