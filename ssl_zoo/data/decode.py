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


JPEG_START = b"\xff\xd8"
"""The first bytes of every JPEG file (start-of-image marker)."""


def read_for_device(path: str | Path, canvas: int
                    ) -> torch.Tensor | tuple[torch.Tensor, tuple[int, int]]:
    """What a loader worker sends when the training device decodes (``train.decode=device``):
    a JPEG's bytes as a uint8 1-D tensor, or, for what the device path cannot decode as
    :func:`decode_image` would (other formats, CMYK JPEGs, JPEGs whose EXIF orientation is
    not 1),
    ``(canvas, original (h, w))`` decoded here. Raises on unreadable files."""
    from PIL import Image

    data = Path(path).read_bytes()
    if data[:2] == JPEG_START:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:  # header only: format, colour mode, orientation
                plain = (im.format == "JPEG" and im.mode in ("RGB", "L")  # not CMYK
                         and im.getexif().get(EXIF_ORIENTATION, 1) == 1)
        if plain:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_image(path, canvas)


def to_canvas(image: torch.Tensor, canvas: int) -> torch.Tensor:
    """A decoded uint8 (3, h, w) image stretched to (3, canvas, canvas), bilinear with
    anti-aliasing (as PIL's resize, which :func:`decode_image` uses), on the image's device."""
    if image.shape[-2:] == (canvas, canvas):
        return image
    x = F.interpolate(image.unsqueeze(0).float(), size=(canvas, canvas), mode="bilinear",
                      align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def decode_on_device(payloads: list, canvas: int, device: torch.device, ok: torch.Tensor,
                     errors: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of :func:`read_for_device` payloads as uint8 (B, 3, canvas, canvas) canvases
    and int64 (B, 2) original sizes on ``device``: the JPEG bytes decoded there in one call of
    ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG on CUDA), the rest copied in. Rows that
    fail (``None`` payloads, a JPEG the decoder rejects) are left zero with ``ok`` False and
    their reason in ``errors`` (both updated in place), for the dataset's ``assemble``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    n = len(payloads)
    images = torch.zeros((n, 3, canvas, canvas), dtype=torch.uint8, device=device)
    sizes = torch.ones((n, 2), dtype=torch.long)
    jpeg_rows = []
    for row, p in enumerate(payloads):
        if isinstance(p, tuple):
            images[row] = p[0].to(device)
            sizes[row, 0], sizes[row, 1] = p[1]
        elif p is not None:
            jpeg_rows.append(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its decoders deprecated
        try:
            decoded = decode_jpeg([payloads[r] for r in jpeg_rows], mode=ImageReadMode.RGB,
                                  device=device) if jpeg_rows else []
        except RuntimeError:  # one bad file fails the whole call: find it, keep the others
            decoded = []
            for r in jpeg_rows:
                try:
                    decoded.append(decode_jpeg(payloads[r], mode=ImageReadMode.RGB,
                                               device=device))
                except RuntimeError as exc:
                    decoded.append(None)
                    why = str(exc).splitlines()[0]  # "decode_jpeg, file.cpp:171, reason"
                    why = why.rsplit(", ", 1)[-1] if ".cpp:" in why else why
                    ok[r], errors[r] = False, f"JPEG decoder: {why}"
    for row, img in zip(jpeg_rows, decoded):
        if img is not None:
            sizes[row, 0], sizes[row, 1] = img.shape[-2], img.shape[-1]
            images[row] = to_canvas(img, canvas)
    return images, sizes.to(device, non_blocking=True)
