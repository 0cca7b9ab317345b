"""Neutral spec builders: the colour distortion and crop layouts several methods share.

Each method's own recipe (which sizes, scales, strengths, blur) lives in its method file and is
built from these (docs/design.md, "The plug-in contract").
"""

from __future__ import annotations

from ssl_zoo.data.views.spec import CropGroup, ViewSpec


def distorted_crops(count: int, size: int, scale: tuple[float, float], strength: float,
                    blur_p: float, blur_kernel_frac: float = 0.1, role: str = "auto"
                    ) -> CropGroup:
    """``count`` crops of ``size`` px, area ``scale`` of the image, with the colour distortion
    of SimCLR (Chen et al. 2020, App. A) at ``strength`` s: jitter (0.8 s, 0.8 s, 0.8 s,
    0.2 s) with p=0.8, grayscale p=0.2, flip p=0.5; Gaussian blur with p=``blur_p`` (a kernel
    of ``blur_kernel_frac`` of the crop; 0: only cut at 4 sigma); ``role`` global, local or
    auto (:class:`CropGroup`)."""
    return CropGroup(count=count, size=size, scale=tuple(scale), brightness=0.8 * strength,
                     contrast=0.8 * strength, saturation=0.8 * strength, hue=0.2 * strength,
                     jitter_p=0.8, grayscale_p=0.2, blur_p=blur_p,
                     blur_kernel_frac=blur_kernel_frac, role=role)


def two_crops(size: int, scale: tuple[float, float], strength: float, blur_p: float,
              blur_kernel_frac: float = 0.1) -> ViewSpec:
    """Two global crops with the same distortion (SimCLR, MoCo, PCL)."""
    return ViewSpec(groups=[distorted_crops(2, size, scale, strength, blur_p, blur_kernel_frac,
                                            role="global")])


def multi_crop(global_size: int, local_size: int, n_local: int,
               global_scale: tuple[float, float], local_scale: tuple[float, float],
               strength: float, blur_p: float, blur_kernel_frac: float = 0.1) -> ViewSpec:
    """Multi-crop (SwAV Sec. 3.2): 2 global crops + ``n_local`` low-resolution local ones, the
    same distortion on all."""
    groups = [distorted_crops(2, global_size, global_scale, strength, blur_p, blur_kernel_frac,
                              role="global")]
    if n_local > 0:
        groups.append(distorted_crops(n_local, local_size, local_scale, strength, blur_p,
                                      blur_kernel_frac, role="local"))
    return ViewSpec(groups=groups)
