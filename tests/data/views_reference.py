"""Single operations the tests compare with torchvision's, built from the views' own code.

The views run colour jitter and blur batched (``ssl_zoo.data.views``); these helpers give one
op at a time through that same code (``color_jitter`` with one op, ``separable_blur`` with a
full Gaussian kernel), so that ``test_views.py`` can check each against torchvision's op.
``crop_boxes`` draws boxes alone, for the distribution tests of the crop geometry.
"""

from __future__ import annotations

import torch

from ssl_zoo.data.views import CROP_ATTEMPTS, boxes_from_uniforms, color_jitter, separable_blur

BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
"""Op indices of ``color_jitter``."""


def _one_jitter_op(x: torch.Tensor, op: int, f) -> torch.Tensor:
    """``color_jitter`` of a copy of ``x`` (n, 3, H, W) with only ``op`` at factor ``f``
    (a float or an (n,) tensor), at the first position."""
    n = x.shape[0]
    order = torch.full((n, 4), -1, dtype=torch.long)
    order[:, 0] = op
    factors = torch.ones(n, 4, dtype=x.dtype)
    factors[:, op] = torch.as_tensor(f, dtype=x.dtype)
    return color_jitter(x.clone(), order, factors)


def adjust_brightness(x: torch.Tensor, f) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` on float images, by the views' jitter."""
    return _one_jitter_op(x, BRIGHTNESS, f)


def adjust_contrast(x: torch.Tensor, f) -> torch.Tensor:
    """torchvision's ``adjust_contrast`` on float images, by the views' jitter."""
    return _one_jitter_op(x, CONTRAST, f)


def adjust_saturation(x: torch.Tensor, f) -> torch.Tensor:
    """torchvision's ``adjust_saturation`` on float images, by the views' jitter."""
    return _one_jitter_op(x, SATURATION, f)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(n, K) normalised 1-D Gaussians, torchvision's ``_get_gaussian_kernel1d`` per sigma."""
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (pos.view(1, -1) / sigma.view(-1, 1).float()) ** 2)
    return pdf / pdf.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample and reflect padding, as torchvision's
    ``gaussian_blur`` (its 2-D kernel is the outer product of two of these 1-D kernels)."""
    kernel_size = min(kernel_size, 2 * min(x.shape[-2:]) - 1)  # reflect padding needs pad < side
    return separable_blur(x, gaussian_kernels(sigma, kernel_size).to(x.dtype))


def crop_boxes(n: int, height, width, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None = None, attempts: int = CROP_ATTEMPTS
               ) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w), each drawn as ``RandomResizedCrop.get_params`` draws one
    (``height``, ``width``: ints, or (n,) tensors of each box's own image size)."""
    u = torch.rand((n, 2 * attempts + 2), generator=generator)
    return boxes_from_uniforms(u[:, :attempts], u[:, attempts:2 * attempts], u[:, -2], u[:, -1],
                               height, width, scale, ratio)
