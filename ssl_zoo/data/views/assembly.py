"""A training batch's views: every group's parameters drawn, its operations run, in order.

Per group, in the order of the usual per-image pipelines: crop and flip, colour jitter,
grayscale, blur, solarize, normalise, each once for the whole batch on its device. uint8 ->
float32 in [0, 1] happens once, with no rounding back to uint8 between operations. Groups of
one crop size are cut into one tensor (one backbone pass later), each recoloured on its rows.
"""

from __future__ import annotations

import torch

from ssl_zoo.data.views.blur import blur_kernel_size, blur_rows_
from ssl_zoo.data.views.boxes import canvas_boxes
from ssl_zoo.data.views.checks import check_batch, check_sizes
from ssl_zoo.data.views.colour import color_jitter, rgb_to_grayscale, solarize
from ssl_zoo.data.views.crop import crop_resize, crop_resize_groups
from ssl_zoo.data.views.normalise import normalise_
from ssl_zoo.data.views.params import GroupParams, Uniforms, draw_params
from ssl_zoo.data.views.spec import CropGroup, Views, ViewSpec


def augment_group(source: torch.Tensor, batch: int, g: CropGroup, params: GroupParams
                  ) -> torch.Tensor:
    """``g.count`` augmented crops of each image, (count*B, 3, s, s) in [0, 1], crop-major.

    ``source`` is the float batch in [0, 1] followed by its mirror image (2B, 3, H, W).
    Order as the usual per-image pipelines: crop, flip, jitter, grayscale, blur, solarize.
    """
    return distort_(crop_resize(source, batch, params, g.size), g, params)


def distort_(out: torch.Tensor, g: CropGroup, params: GroupParams) -> torch.Tensor:
    """Group ``g``'s colour operations on its crops ``out`` (count*B, 3, s, s), in place (also
    on a slice of a larger tensor): jitter, grayscale, blur, solarize."""
    strengths = (g.brightness, g.contrast, g.saturation, g.hue)
    if g.jitter_p > 0 and any(strengths):
        color_jitter(out, params.jitter_order, params.jitter_factors, strengths,
                     params.hue_subsets)
    if g.grayscale_p > 0:
        gray = params.grayscale.view(-1, 1, 1, 1)
        out.copy_(torch.where(gray, rgb_to_grayscale(out).expand_as(out), out))
    if g.blur_p > 0:
        blur_rows_(out, params.blur, params.blur_sigma, blur_kernel_size(g), params.blur_index)
    if g.solarize_p > 0:
        out.copy_(torch.where(params.solarize.view(-1, 1, 1, 1), solarize(out), out))
    return out


def _source(images: torch.Tensor) -> torch.Tensor:
    """The batch as float32 in [0, 1] followed by its mirror image, (2B, 3, H, W)."""
    batch, _, height, width = images.shape
    source = torch.empty((2 * batch, 3, height, width), device=images.device,
                         dtype=torch.float32)
    torch.div(images, 255, out=source[:batch])
    source[batch:] = source[:batch].flip(-1)
    return source


def _group_params(g: CropGroup, images: torch.Tensor, sizes: torch.Tensor | None,
                  generator: torch.Generator | None) -> GroupParams:
    """Group ``g``'s parameters for a batch, boxes in canvas pixels: drawn in each original's
    geometry when ``sizes`` are given, then mapped onto the canvas."""
    batch, _, height, width = images.shape
    if sizes is None:
        return draw_params(g.count * batch, height, width, g, images.device, generator)
    rows = sizes.repeat(g.count, 1)  # row k*B + b is image b
    params = draw_params(g.count * batch, rows[:, 0], rows[:, 1], g, images.device, generator)
    params.boxes = canvas_boxes(params.boxes, rows, height, width)
    return params


@torch.no_grad()
def make_views(images: torch.Tensor, spec: ViewSpec,
               generator: torch.Generator | None = None,
               sizes: torch.Tensor | None = None) -> Views:
    """Augmented crops of a uint8 (B, 3, H, W) batch, made on the batch's device.

    Every random choice is per sample (:func:`draw_params`), drawn with ``generator`` (on its
    own device; None: the global generator of the batch's device), group after group in spec
    order. Returns :class:`Views` with one float32 tensor (n*B, 3, size, size) per crop size,
    normalised, crop-major (rows [k*B:(k+1)*B] are its crop k of every image): the groups of
    one size, whatever their recipe and role, share one tensor (one ``roi_align`` call, then
    each group's colour operations in place on its rows), so a method encodes them in one
    backbone pass (docs/design.md, "Data flow"); ``views[i]`` is still crop i in view-spec
    order. Groups of count 0 are left out. Made under ``no_grad`` (not ``inference_mode``, so
    the crops can enter autograd).

    ``sizes`` (B, 2), integer, on the batch's device: each image's original (height, width)
    when the batch holds canvases (the whole image stretched to H x W, as folder and prepared
    sources store it). Crop boxes are then drawn in each image's own geometry, as
    ``RandomResizedCrop`` on the original (area fraction, aspect in original pixels, position,
    fallback), and cut from the canvas at the same place (:func:`canvas_boxes`). None: the
    images are their own originals.
    """
    check_batch(images)
    batch = images.shape[0]
    check_sizes(sizes, batch)
    source = _source(images)
    active = [g for g in spec.groups if g.count > 0]  # a count of 0 leaves a group out
    params = [_group_params(g, images, sizes, generator) for g in active]  # in spec order
    tensors, counts = [], []
    first_crop = [sum(g.count for g in active[:i]) for i in range(len(active))]
    slots = [0] * sum(g.count for g in active)  # crop (spec order) -> position, tensor-major
    for size in dict.fromkeys(g.size for g in active):  # sizes in order of first appearance
        members = [i for i, g in enumerate(active) if g.size == size]
        out = crop_resize_groups(source, batch, [params[i] for i in members], size)
        row = 0
        for i in members:
            g = active[i]
            distort_(out[row * batch:(row + g.count) * batch], g, params[i])
            for k in range(g.count):
                slots[first_crop[i] + k] = sum(counts) + row + k
            row += g.count
        tensors.append(normalise_(out, spec.mean, spec.std))
        counts.append(row)
    return Views(tensors, counts, roles=spec.crop_roles(), slots=slots)


def skip_view_draws(spec: ViewSpec, batch: int, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> None:
    """Advance ``generator`` (None: the device's global one) exactly as :func:`make_views` of a
    batch of ``batch`` images advances it (the same draws, nothing else): a step whose crops
    were made elsewhere (in the loader's workers) leaves torch's generator where one that made
    them itself would, so the method's own draws match too."""
    for g in spec.groups:
        if g.count > 0:
            Uniforms.draw(g.count * batch, torch.device(device), generator)
