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


def asymmetric_pair(size: int, blur_kernel_frac: float) -> ViewSpec:
    """BYOL's two views (Grill et al. 2020, Table 6), also Barlow Twins' and VICReg's: area
    (0.08, 1), flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2; view 1
    blur p=1.0, solarise p=0; view 2 blur p=0.1, solarise p=0.2 (blur sigma 0.1-2). Below
    96 px the blur is off (solo-learn's and lightly's CIFAR recipes). ``blur_kernel_frac``: the
    blur kernel as a fraction of the crop (BYOL: 0.1, 23 px at 224) or 0 for no cap (PIL's
    radius-sigma blur of the official Barlow Twins and VICReg code). The two views are two
    groups of one size: one backbone pass, batch statistics over both."""
    blur = size >= 96

    def view(blur_p: float, solarize_p: float) -> CropGroup:
        return CropGroup(count=1, size=size, scale=(0.08, 1.0), brightness=0.4, contrast=0.4,
                         saturation=0.2, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
                         blur_p=blur_p if blur else 0.0, blur_kernel_frac=blur_kernel_frac,
                         solarize_p=solarize_p)

    return ViewSpec(groups=[view(1.0, 0.0), view(0.1, 0.2)])
