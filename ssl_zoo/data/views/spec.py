"""What a method asks the views for, and what it gets back.

:class:`CropGroup` (crops of one size, one augmentation recipe and one role) and
:class:`ViewSpec` (the groups in order, then the normalisation) are plain dataclasses the run
config holds (``ssl_zoo.config`` imports only this module); :class:`Views` is the batch of crops
a method's ``forward`` receives (docs/design.md, "The plug-in contract").

Roles (docs/design.md, "Data flow"): every group is ``global`` (views of most of the image:
the crops a teacher sees or whose codes are assigned, SwAV's and DINO's two large crops) or
``local`` (small crops that only predict). ``auto``, the default of a :class:`CropGroup`,
means global for the groups of the spec's largest crop size and local for the others; the run
config settles it (``config.json`` holds ``global`` or ``local``). :meth:`ViewSpec.crop_indices`
and :meth:`Views.crop_indices` say which crops (indices into the flat list of crops in view-spec
order, the order of :meth:`Method.encode_views`) have a role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ssl_zoo.data.stats import CIFAR10, IMAGENET
from ssl_zoo.errors import ConfigError

CIFAR_MEAN, CIFAR_STD = CIFAR10
IMAGENET_MEAN, IMAGENET_STD = IMAGENET

ROLES = ("global", "local")
"""What a crop is for: global (seen by a teacher / assigned codes), local (predicts only)."""
AUTO_ROLE = "auto"
"""A group's role derived from its size: global at the spec's largest crop size, else local."""


def sized_roles(sizes: Sequence[int], roles: Sequence[str] | None = None,
                largest: int | None = None) -> list[str]:
    """``roles`` with ``auto`` (or every role when ``roles`` is None) settled from ``sizes``:
    global at ``largest`` (None: the largest of ``sizes``) and above, local below. An unknown
    role is a ValueError."""
    roles = [AUTO_ROLE] * len(sizes) if roles is None else list(roles)
    if len(roles) != len(sizes):
        raise ValueError(f"{len(roles)} roles for {len(sizes)} crop groups")
    for r in roles:
        if r != AUTO_ROLE and r not in ROLES:
            raise ValueError(f"unknown crop role {r!r} (global, local or auto)")
    largest = max(sizes, default=0) if largest is None else largest
    return [("global" if size >= largest else "local") if r == AUTO_ROLE else r
            for r, size in zip(roles, sizes)]


@dataclass
class CropGroup:
    """``count`` crops of ``size`` x ``size`` pixels sharing one augmentation recipe and role."""

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
    role: str = AUTO_ROLE
    """global (views of most of the image: the crops a teacher sees or whose codes are
    assigned), local (small crops that only predict), or auto: global when the group has the
    spec's largest crop size, else local (settled in the run's config.json)."""


@dataclass
class ViewSpec:
    """The crops a method trains on: groups in order (global first), then normalisation."""

    groups: list[CropGroup] = field(default_factory=lambda: [CropGroup()])
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    @property
    def num_crops(self) -> int:
        return sum(g.count for g in self.groups)

    def group_roles(self) -> list[str]:
        """Every group's role, ``auto`` settled: global for the groups of the largest crop size
        among those with crops (count > 0; a group of count 0 compared with it), local for the
        others. Unknown role: ValueError."""
        largest = max((g.size for g in self.groups if g.count > 0), default=0)
        return sized_roles([g.size for g in self.groups], [g.role for g in self.groups], largest)

    def crop_roles(self) -> list[str]:
        """The role of every crop, in view-spec order (a group's ``count`` crops in a row)."""
        return [r for g, r in zip(self.groups, self.group_roles()) for _ in range(g.count)]

    def crop_indices(self, role: str = "global") -> list[int]:
        """Indices of the crops of ``role`` into the flat list of crops in view-spec order
        (the order of ``Views`` and ``Method.encode_views``): SwAV assigns codes from the
        global crops, a teacher sees them."""
        if role not in ROLES:
            raise ValueError(f"unknown crop role {role!r} (global or local)")
        return [i for i, r in enumerate(self.crop_roles()) if r == role]


def crop_list_problem(name: str, crops: Sequence[int], n_crops: int | None = None
                      ) -> str | None:
    """What is wrong with a method's list of crop indices ``name`` (e.g. ``crops_for_assign``)
    for ``n_crops`` crops (None: not known yet), or None: at least one crop, none twice, each an
    index in 0..n_crops-1 of the view spec's crops."""
    crops = tuple(crops)
    if not crops:
        return f"{name} must name at least one crop, e.g. (0, 1)"
    if len(set(crops)) != len(crops):
        return f"{name} lists a crop twice: {crops}"
    if n_crops is not None and not all(0 <= c < n_crops for c in crops):
        return (f"{name} {crops}: crop indices must be in 0..{n_crops - 1} for the {n_crops} "
                "crops of the view spec")
    return None


def require_two_views(spec: ViewSpec, method: str) -> None:
    """A one-line ConfigError unless ``spec`` makes exactly 2 crops of one size (the two views
    of Barlow Twins and VICReg)."""
    if spec.num_crops != 2 or len({g.size for g in spec.groups if g.count > 0}) != 1:
        raise ConfigError(f"{method} trains on exactly 2 crops of one size, got counts "
                          f"{[g.count for g in spec.groups]} and sizes "
                          f"{[g.size for g in spec.groups]}")


def require_crops(spec: ViewSpec, role: str, at_least: int, method: str) -> list[int]:
    """The indices of ``spec``'s ``role`` crops, or a one-line ConfigError when there are fewer
    than ``at_least`` (for a method's ``check_views``: DINO's teacher needs 2 global crops)."""
    found = spec.crop_indices(role)
    if len(found) < at_least:
        have = ", ".join(f"{i}: {g.count}x{g.size} {r}" for i, (g, r) in
                         enumerate(zip(spec.groups, spec.group_roles())))
        crops = "crop" if at_least == 1 else "crops"
        raise ConfigError(f"views: {method} needs at least {at_least} {role} {crops}, the view "
                          f"spec has {len(found)} (groups {have}); set "
                          f"views.groups.N.role={role} or views.groups.N.count")
    return found


class Views(Sequence):
    """The augmented crops of one batch, grouped by resolution.

    ``groups[g]`` is one tensor of shape (count_g * B, C, size_g, size_g) holding ``count_g``
    crops of one size stacked crop-major: all the crops of that size, whatever their group,
    recipe and role, so a method encodes them in one backbone pass (``Method.encode_views``).
    ``views[i]`` (crop i in view-spec order, shape (B, C, h, w)) is a free slice: ``slots[i]``
    is its position among the crops of all ``groups`` in turn (None: in that order already).
    ``index`` holds the dataset indices of the B images (for methods that track samples).
    ``roles`` holds every crop's role (global / local, see :class:`CropGroup`), in crop order;
    None: derived from the sizes (the largest crops are global).
    """

    def __init__(self, groups: list[torch.Tensor], counts: list[int],
                 index: torch.Tensor | None = None, roles: Sequence[str] | None = None,
                 slots: Sequence[int] | None = None):
        if len(groups) != len(counts):
            raise ValueError("one count per group")
        self.groups = groups
        self.counts = list(counts)
        self.batch_size = groups[0].shape[0] // counts[0]
        self.index = index
        stacked = [c for g, n in zip(groups, counts) for c in g.chunk(n, dim=0)]
        if slots is None:
            slots = range(len(stacked))
        elif sorted(slots) != list(range(len(stacked))):
            raise ValueError(f"slots must order the {len(stacked)} crops, got {list(slots)}")
        self.slots = list(slots)
        self._crops: list[torch.Tensor] = [stacked[s] for s in self.slots]
        if roles is None:
            roles = sized_roles([c.shape[-1] for c in self._crops])
        elif len(roles) != len(self._crops) or not set(roles) <= set(ROLES):
            raise ValueError(f"expected one role (global or local) per crop for "
                             f"{len(self._crops)} crops, got {list(roles)}")
        self.roles = list(roles)

    @classmethod
    def from_crops(cls, crops: list[torch.Tensor], index: torch.Tensor | None = None,
                   roles: Sequence[str] | None = None) -> Views:
        """Group a flat list of crops by resolution (one tensor per size, in order of first
        appearance; ``views[i]`` stays ``crops[i]``); ``roles`` one per crop (None: the largest
        crops are global)."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(crops):
            by_size.setdefault(tuple(c.shape[-2:]), []).append(i)
        order = [i for members in by_size.values() for i in members]
        slots = [0] * len(crops)
        for position, i in enumerate(order):
            slots[i] = position
        return cls([torch.cat([crops[i] for i in members]) for members in by_size.values()],
                   [len(members) for members in by_size.values()], index, roles, slots)

    def features_in_crop_order(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One (B, ...) tensor per crop in view-spec order, from one output per tensor of
        ``groups`` (e.g. the backbone's features of each, first dimension count * B)."""
        stacked = [c for f, n in zip(features, self.counts) for c in f.chunk(n, dim=0)]
        return [stacked[s] for s in self.slots]

    def crop_indices(self, role: str = "global") -> list[int]:
        """Indices of the crops of ``role`` (global, local), as :meth:`ViewSpec.crop_indices`."""
        if role not in ROLES:
            raise ValueError(f"unknown crop role {role!r} (global or local)")
        return [i for i, r in enumerate(self.roles) if r == role]

    def to(self, device: torch.device, non_blocking: bool = False) -> Views:
        """The same crops (and index) on ``device``."""
        index = None if self.index is None else self.index.to(device, non_blocking=non_blocking)
        return Views([g.to(device, non_blocking=non_blocking) for g in self.groups],
                     self.counts, index, self.roles, self.slots)

    def __reduce__(self):  # sent between processes as its groups (the crops are slices)
        return Views, (self.groups, self.counts, self.index, self.roles, self.slots)

    def __len__(self) -> int:
        return len(self._crops)

    def __getitem__(self, i):
        return self._crops[i]
