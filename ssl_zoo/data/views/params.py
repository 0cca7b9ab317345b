"""Every random choice of a group's crops, drawn per sample from one block of uniforms.

The parameters follow the distributions of torchvision's per-image transforms
(RandomResizedCrop with its 10 tries and central fallback, RandomHorizontalFlip, ColorJitter
with its 4 ops in a random order per sample, RandomGrayscale, GaussianBlur with a uniform
sigma, RandomSolarize). All of them come from one draw of :class:`Uniforms` per group, so a
seed gives the same crops on any device and :func:`skip_view_draws
<ssl_zoo.data.views.assembly.skip_view_draws>` can advance a generator without making crops.

Two choices are balanced over the batch rather than independent per sample (stratified
sampling), so that the rows doing them are fixed-size subsets known on the host and a GPU
never waits (docs/design.md, "Data flow"): the hue shift's position among the jitter ops, and
which rows are blurred. Each row keeps torchvision's probabilities; only the dependence between
the rows of one batch differs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from ssl_zoo.data.views.boxes import boxes_from_uniforms
from ssl_zoo.data.views.spec import CropGroup

CROP_ATTEMPTS = 10
"""Tries of RandomResizedCrop before its central fallback (torchvision's 10)."""


def _columns(n: int = 1):
    """A :class:`Uniforms` field of ``n`` columns (1: a (rows,) vector)."""
    return field(metadata={"columns": n})


@dataclass(frozen=True)
class Uniforms:
    """The U[0, 1) numbers of ``n`` crops, named slices of one (n, :data:`UNIFORMS_PER_CROP`)
    draw whose columns are these fields in this order.

    Every field is drawn whatever the group's settings, so changing one probability leaves the
    other choices of a seed unchanged. Adding, removing or reordering a field changes every
    crop of every seed.
    """

    area: torch.Tensor = _columns(CROP_ATTEMPTS)
    """(n, 10) area fraction of each RandomResizedCrop try."""
    log_ratio: torch.Tensor = _columns(CROP_ATTEMPTS)
    """(n, 10) log aspect ratio of each try."""
    top: torch.Tensor = _columns()
    """Vertical place of the box."""
    left: torch.Tensor = _columns()
    """Horizontal place of the box."""
    flip: torch.Tensor = _columns()
    """Horizontal flip if below ``flip_p``."""
    jitter_on: torch.Tensor = _columns()
    """Colour jitter if below ``jitter_p``."""
    jitter_factors: torch.Tensor = _columns(4)
    """(n, 4) brightness, contrast, saturation and hue factors."""
    linear_order_keys: torch.Tensor = _columns(3)
    """(n, 3) sort keys: the order of brightness, contrast and saturation."""
    hue_position_key: torch.Tensor = _columns()
    """Sort key over the batch placing the hue shift among the four jitter positions."""
    grayscale: torch.Tensor = _columns()
    """Grayscale if below ``grayscale_p``."""
    blur_key: torch.Tensor = _columns()
    """Sort key over the batch choosing the blurred rows."""
    blur_sigma: torch.Tensor = _columns()
    """Blur sigma, within ``blur_sigma``."""
    solarize: torch.Tensor = _columns()
    """Solarisation if below ``solarize_p``."""

    @classmethod
    def draw(cls, n: int, device: torch.device, generator: torch.Generator | None = None
             ) -> Uniforms:
        """One (n, :data:`UNIFORMS_PER_CROP`) draw with ``generator`` on its own device (None:
        the global generator of ``device``), moved to ``device`` and cut into the fields."""
        widths = [f.metadata["columns"] for f in fields(cls)]
        parts = torch.split(_rand((n, sum(widths)), device, generator), widths, dim=1)
        return cls(**{f.name: p.squeeze(1) if w == 1 else p
                      for f, w, p in zip(fields(cls), widths, parts)})


UNIFORMS_PER_CROP = sum(f.metadata["columns"] for f in fields(Uniforms))
"""Uniforms drawn per crop (36)."""


def _rand(shape: tuple[int, ...], device: torch.device, generator) -> torch.Tensor:
    """U[0, 1) float32 drawn with ``generator`` on its own device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, device=gen_device, generator=generator).to(device)


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


def jitter_factors(u: torch.Tensor, g: CropGroup) -> torch.Tensor:
    """(n, 4) brightness, contrast, saturation, hue factors from (n, 4) U[0, 1), as
    ``ColorJitter.get_params`` draws them (factor ranges (max(0, 1 - s), 1 + s) and (-h, h))."""
    lo = (max(0.0, 1 - g.brightness), max(0.0, 1 - g.contrast), max(0.0, 1 - g.saturation),
          -g.hue)
    hi = (1 + g.brightness, 1 + g.contrast, 1 + g.saturation, g.hue)
    return torch.stack([u[:, i] * (hi[i] - lo[i]) + lo[i] for i in range(4)], dim=1)


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


def _jitter_order(u: Uniforms, jitter_p: float, device: torch.device
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(n, 4) op order of each row (-1 where it has no jitter) and the rows whose hue shift
    sits at each position: a quarter of the rows per position (balanced), the other three ops
    in the order of their keys, so every row's order is uniform over the 24 as
    ``ColorJitter``'s (exactly when n is a multiple of 4)."""
    n = u.hue_position_key.shape[0]
    linear_order = torch.argsort(u.linear_order_keys, dim=1)  # brightness, contrast, saturation
    hue_position, hue_subsets = balanced_labels(u.hue_position_key,
                                                [n // 4 + (j < n % 4) for j in range(4)])
    pos = torch.arange(4, device=device).view(1, 4)
    hue_at = hue_position.view(-1, 1)
    order = torch.where(pos == hue_at, 3,
                        linear_order.gather(1, (pos - (pos > hue_at).long()).clamp(max=2)))
    order = torch.where((u.jitter_on < jitter_p).unsqueeze(1), order, -1)
    return order, hue_subsets


def draw_params(n: int, height: int | torch.Tensor, width: int | torch.Tensor, g: CropGroup,
                device: torch.device, generator: torch.Generator | None = None) -> GroupParams:
    """All random parameters of ``n`` crops of group ``g``, from one :class:`Uniforms` draw.

    ``height`` and ``width``: the image size the boxes are drawn in, one for all (ints) or each
    row's own (n,) tensors (:func:`boxes_from_uniforms`); boxes are in those pixels. The hue
    position and the blurred rows are balanced over the batch (round(blur_p * n) rows are
    blurred); each row's own probabilities are torchvision's (exactly when n is a multiple of 4
    and blur_p * n is whole).
    """
    u = Uniforms.draw(n, device, generator)
    boxes = boxes_from_uniforms(u.area, u.log_ratio, u.top, u.left, height, width, g.scale,
                                g.ratio)
    order, hue_subsets = _jitter_order(u, g.jitter_p, device)
    n_blur = min(n, int(round(g.blur_p * n)))
    blur_label, blur_subsets = balanced_labels(u.blur_key, [n - n_blur, n_blur])
    lo, hi = g.blur_sigma
    return GroupParams(
        boxes=boxes, flip=u.flip < g.flip_p, jitter_order=order,
        jitter_factors=jitter_factors(u.jitter_factors, g), grayscale=u.grayscale < g.grayscale_p,
        blur=blur_label.bool(), blur_sigma=u.blur_sigma * (hi - lo) + lo,
        solarize=u.solarize < g.solarize_p, hue_subsets=hue_subsets, blur_index=blur_subsets[1],
    )
