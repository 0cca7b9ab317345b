"""Batched multi-crop views made on the device for a whole uint8 batch at once.

Per-image PIL augmentation of 6-8 crops is the known bottleneck of multi-crop training (SwAV,
Caron et al. 2020, Sec. 3.2; docs/design.md, "Data flow"). Here every random parameter is still
drawn per sample, from the same distributions as torchvision's per-image transforms, but each
operation runs once for the whole batch as tensor code on the batch's device. Nothing is read
back from the device (no ``nonzero``, no data-dependent shapes), so a GPU never waits for the
host: per-sample choices are masks, and the two choices that need a subset (hue position, blur)
are drawn balanced over the batch, a fixed number of samples each, chosen at random.

Where each part lives (import everything from this package):

* :mod:`~ssl_zoo.data.views.spec`: :class:`CropGroup`, :class:`ViewSpec` (what a method asks
  for, each group with its role, global or local) and :class:`Views` (what its ``forward``
  gets), :func:`require_crops` (a method's check that the spec has the crops it needs);
* :mod:`~ssl_zoo.data.views.params`: the random parameters of a group's crops, named slices
  (:class:`Uniforms`) of one draw per group;
* operations: :mod:`~ssl_zoo.data.views.boxes` (crop geometry),
  :mod:`~ssl_zoo.data.views.crop` (cut and resize), :mod:`~ssl_zoo.data.views.colour`,
  :mod:`~ssl_zoo.data.views.blur`, :mod:`~ssl_zoo.data.views.normalise`;
* :mod:`~ssl_zoo.data.views.assembly`: :func:`make_views` and :func:`skip_view_draws`;
* :mod:`~ssl_zoo.data.views.eval_crop`: :func:`eval_view`, the deterministic evaluation view;
* :mod:`~ssl_zoo.data.views.builders`: the neutral spec builders methods make their recipes
  from (:func:`two_crops`, :func:`multi_crop`).
"""

from ssl_zoo.data.views.assembly import augment_group, make_views, skip_view_draws
from ssl_zoo.data.views.blur import (
    BLUR_TRUNCATE_SIGMAS,
    blur_kernel_size,
    blur_radii,
    blur_rows_,
    separable_blur,
)
from ssl_zoo.data.views.boxes import (
    boxes_from_uniforms,
    canvas_boxes,
    fallback_boxes,
    source_pixels_per_output,
)
from ssl_zoo.data.views.builders import asymmetric_pair, distorted_crops, multi_crop, two_crops
from ssl_zoo.data.views.checks import check_batch, check_sizes
from ssl_zoo.data.views.colour import (
    GRAY_WEIGHTS,
    SOLARIZE_THRESHOLD,
    adjust_hue,
    color_jitter,
    rgb_to_grayscale,
    solarize,
)
from ssl_zoo.data.views.crop import crop_resize, roi_resize
from ssl_zoo.data.views.eval_crop import EVAL_CROP_FRACTION, eval_boxes, eval_view
from ssl_zoo.data.views.normalise import normalise_
from ssl_zoo.data.views.params import (
    CROP_ATTEMPTS,
    UNIFORMS_PER_CROP,
    GroupParams,
    Uniforms,
    balanced_labels,
    draw_params,
    jitter_factors,
)
from ssl_zoo.data.views.spec import (
    AUTO_ROLE,
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROLES,
    CropGroup,
    Views,
    ViewSpec,
    crop_list_problem,
    require_crops,
    require_two_views,
    sized_roles,
)

__all__ = [
    "AUTO_ROLE", "ROLES", "crop_list_problem", "require_crops", "require_two_views",
    "sized_roles",
    "BLUR_TRUNCATE_SIGMAS", "CIFAR_MEAN", "CIFAR_STD", "CROP_ATTEMPTS", "EVAL_CROP_FRACTION",
    "GRAY_WEIGHTS", "IMAGENET_MEAN", "IMAGENET_STD", "SOLARIZE_THRESHOLD", "UNIFORMS_PER_CROP",
    "CropGroup", "GroupParams", "Uniforms", "ViewSpec", "Views", "adjust_hue", "augment_group",
    "balanced_labels", "blur_kernel_size", "blur_radii", "blur_rows_", "boxes_from_uniforms",
    "canvas_boxes", "check_batch", "check_sizes", "color_jitter", "crop_resize",
    "asymmetric_pair",
    "distorted_crops", "draw_params", "eval_boxes", "eval_view", "fallback_boxes",
    "jitter_factors", "make_views", "multi_crop", "normalise_", "rgb_to_grayscale",
    "roi_resize", "separable_blur", "skip_view_draws", "solarize", "source_pixels_per_output",
    "two_crops",
]
