"""Image files -> fixed-size canvases that keep the whole image, plus each image's original size.

A real-size image (say 500x375) becomes a ``canvas`` x ``canvas`` uint8 array holding the whole
image stretched to the square (aspect not preserved), and its original (height, width) is kept
beside it. The views then draw every crop box in the original's pixels, as torchvision's
``RandomResizedCrop`` on the original, and cut it from the canvas at the same place
(``views.canvas_boxes``). Stretching rather than letterboxing: at the same number of stored
bytes a stretched canvas keeps at least the letterbox's resolution on both axes (more on the
shorter one: 4:3 images keep 4/3 more rows) and stores no padding, and since the box is mapped
axis by axis the stretch is undone exactly when a crop is cut.

Decoding is made cheap where the canvas is smaller than the file: JPEGs are decoded at 1/2,
1/4 or 1/8 scale in the DCT (PIL ``draft``) while both sides stay >= the canvas, other formats
are first shrunk by an integer box filter (``reducing_gap``), then resized (bilinear, PIL's
anti-aliased filter) to the canvas.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

EXIF_ORIENTATION = 0x0112
"""EXIF tag of the orientation; values 5-8 swap width and height."""
REDUCING_GAP = 3.0
"""PIL ``resize(reducing_gap=...)``: shrink by an integer box filter first while the image stays
>= 3x the target (PIL: indistinguishable from a full resample at 3)."""


def decode_image(path: str | Path, canvas: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image file as uint8 (3, canvas, canvas), the whole image stretched, and its original
    (height, width) after EXIF orientation. Raises on unreadable files."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette transparency, EXIF and bomb warnings
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
            im.draft("RGB", (canvas, canvas))  # JPEG: DCT scaling while both sides >= canvas
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode
                                else "RGB")
            im = im.convert("RGB")
            if im.size != (canvas, canvas):
                im = im.resize((canvas, canvas), Image.BILINEAR, reducing_gap=REDUCING_GAP)
            arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()), (h, w)


def decode_jpegs_cuda(data: list[torch.Tensor], canvas: int, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG files' bytes (uint8 1-D CPU tensors) decoded on the GPU (nvJPEG through
    ``torchvision.io.decode_jpeg(device=...)``) into uint8 (B, 3, canvas, canvas) canvases on
    ``device`` and their int64 (B, 2) original sizes there; for machines with CUDA, where the
    CPU workers would be the bottleneck. EXIF orientation is not applied on this path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("decode_jpegs_cuda needs a CUDA device")
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(images), 3, canvas, canvas), dtype=torch.uint8, device=device)
    sizes = torch.empty((len(images), 2), dtype=torch.long)
    for i, img in enumerate(images):
        sizes[i, 0], sizes[i, 1] = img.shape[-2], img.shape[-1]
        x = F.interpolate(img.unsqueeze(0).float(), size=(canvas, canvas), mode="bilinear",
                          align_corners=False, antialias=True)
        out[i] = x.round_().clamp_(0, 255).to(torch.uint8)[0]
    return out, sizes.to(device, non_blocking=True)
