"""Gaussian blur of a batch, one sigma per sample, in one call per group.

Each sample's Gaussian reaches 4 of its own sigma either side (or the group's kernel size, if
smaller); the weights beyond are below exp(-8) of the centre and hold < 1e-4 of the mass. The
blurred samples go through one separable convolution with the group's largest kernel, each
sample's Gaussian zero beyond its own radius.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_zoo.data.views.spec import CropGroup

BLUR_TRUNCATE_SIGMAS = 4.0
"""Gaussian kernels reach at most this many sigma either side of the centre."""


def blur_kernel_size(g: CropGroup) -> int:
    """Largest odd kernel side: ``blur_kernel_frac`` of the crop (SimCLR's 10%; 0: no cap), cut
    at 4 sigma_max."""
    cut = 2 * math.ceil(BLUR_TRUNCATE_SIGMAS * g.blur_sigma[1]) + 1
    if g.blur_kernel_frac <= 0:
        return cut
    k = max(3, int(round(g.blur_kernel_frac * g.size)))
    k = k if k % 2 == 1 else k + 1
    return min(k, cut)


def blur_radii(sigma: torch.Tensor, max_kernel_size: int) -> torch.Tensor:
    """Per-sample kernel half-width: ceil(4 sigma), at most the group's kernel allows."""
    radius = torch.ceil(sigma * BLUR_TRUNCATE_SIGMAS).clamp_(min=1, max=max_kernel_size // 2)
    return radius.long()


def blur_rows_(x: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor, max_kernel_size: int,
               rows: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian blur in place of the rows where ``mask``, each with its own sigma, in one call.

    Every row is convolved with a kernel of the group's largest size; a row's Gaussian has
    weight only within its own radius ceil(4 sigma) (zeros beyond, normalised over its support,
    so it equals a blur with that smaller kernel: reflect padding mirrors the same pixels within
    the radius), and rows without blur get the identity kernel. With ``rows`` (the indices
    where ``mask``, of a size known on the host) only those rows are convolved.
    """
    if rows is not None:
        xs = x.index_select(0, rows)
        keep = torch.ones(rows.shape[0], dtype=torch.bool, device=x.device)
        return x.index_copy_(0, rows, blur_rows_(xs, keep, sigma.index_select(0, rows),
                                                 max_kernel_size))
    _, _, h, w = x.shape
    size = min(max_kernel_size, 2 * min(h, w) - 1)  # reflect padding needs pad < side
    half = size // 2
    radius = torch.where(mask, blur_radii(sigma, size), 0)
    pos = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32).view(1, -1)
    inside = pos.abs() <= radius.view(-1, 1)
    weights = torch.where(inside, torch.exp(-0.5 * (pos / sigma.float().view(-1, 1)) ** 2), 0.0)
    kernels = weights / weights.sum(1, keepdim=True)
    return x.copy_(separable_blur(x, kernels.to(x.dtype)))


def separable_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` (n, c, H, W) convolved with its own 1-D kernel (n, K), K odd, along
    both axes, with reflect padding (torchvision's ``gaussian_blur`` with the 2-D kernel that
    is the outer product of the 1-D one)."""
    n, c, h, w = x.shape
    size = kernels.shape[1]
    pad = size // 2
    k = kernels.repeat_interleave(c, dim=0, output_size=n * c)
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)
