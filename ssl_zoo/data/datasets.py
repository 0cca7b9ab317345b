"""What every source yields: image datasets (in memory or decoded on demand) and the splits
of a source, with the array helpers the in-memory sources share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_zoo.errors import DataError

_RESIZE_CHUNK = 512


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
class ImageDataset:
    """Images addressed by index; ``load(index)`` gives uint8 (b, 3, S, S) on the CPU.

    ``labels`` is int64 (N,) with -1 for unlabelled images, or None when nothing is labelled.
    ``image_size`` is the size the model sees. A ``lazy`` dataset is read by the loader through
    DataLoader workers and must also have ``fetch(indices) -> (images, ok, index, whys,
    sizes)`` (run in the workers) and ``assemble(images, ok, index, whys, sizes) -> (images,
    index, sizes)`` (run in the main process), as ``FolderImages`` does; its images are
    canvases of originals whose (height, width) ``sizes`` (b, 2) travel with them.
    """

    name: str = ""
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    image_size: int = 0
    lazy: bool = False
    skipped: int = 0

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_batch(self, index: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(images, index, original sizes (b, 2) or None when the images are their own)."""
        return self.load(index), index, None

    def use_canvas(self, side: int) -> str | None:
        """Hold canvases of ``side`` px from now on (datasets that decode image files), or say
        in one line why this dataset cannot (a store of smaller canvases); None when done or
        when there is nothing to do (in-memory images are their own originals)."""
        return None

    def __repr__(self) -> str:
        kind = "unlabelled" if self.labels is None else f"{len(self.classes or [])} classes"
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, " \
               f"{self.image_size} px, {kind})"


class TensorImages(ImageDataset):
    """An in-memory uint8 (N, 3, S, S) tensor with optional int64 labels."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor | None = None,
                 classes: list[str] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"{name}: expected uint8 images (N, 3, H, W), got "
                            f"{tuple(images.shape)} {images.dtype}")
        if images.shape[2] != images.shape[3]:
            raise DataError(f"{name}: images must be square, got "
                            f"{images.shape[2]}x{images.shape[3]} px")
        if images.shape[0] == 0:
            raise DataError(f"{name}: holds no images")
        if labels is not None and labels.shape != (images.shape[0],):
            raise DataError(f"{name}: {images.shape[0]} images but labels of shape "
                            f"{tuple(labels.shape)}")
        self.name, self.images, self.classes = name, images.contiguous(), classes
        self.labels = labels.long() if labels is not None else None
        self.image_size = int(images.shape[-1])

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]


@dataclass
class DataSplits:
    """The splits one source provides."""

    train: ImageDataset
    """What self-supervised training iterates."""
    eval_train: ImageDataset | None
    """Labelled images for the kNN memory bank and the linear probe (None: no labels)."""
    test: ImageDataset | None
    """Held-out images for evaluation (None: the source has no test split)."""

    @property
    def skipped(self) -> int:
        """Bad image files skipped so far, over all distinct splits."""
        seen = {id(d): d for d in (self.train, self.eval_train, self.test) if d is not None}
        return sum(int(d.skipped) for d in seen.values())


# --------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------
def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 3, size, size): shorter side to ``size`` (antialiased
    bilinear), then a centre crop; done in chunks to bound memory."""
    n, _, h, w = images.shape
    if h == w == size:
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    for s in range(0, n, _RESIZE_CHUNK):
        x = images[s:s + _RESIZE_CHUNK].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=nh < h or nw < w)
        out[s:s + _RESIZE_CHUNK] = x[:, :, top:top + size, left:left + size].round().clamp(0, 255)
    return out


def _to_nchw(x: np.ndarray, where: str) -> torch.Tensor:
    """uint8 images in NHWC, NCHW or grey NHW(1) as a (N, 3, H, W) tensor.

    The channel axis is the last one (NHWC) or the second (NCHW) when it has 1 or 3 entries;
    when both could be, the layout that gives square images wins, and NHWC on a tie.
    """
    if x.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels (0-255), got dtype {x.dtype}")
    if x.ndim == 3:  # grey (N, H, W)
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}: expected images (N, H, W, 3), got shape {x.shape}")
    last, second = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
    if last and second:
        last = x.shape[1] == x.shape[2] or x.shape[2] != x.shape[3]
    if last:
        x = x.transpose(0, 3, 1, 2)
    elif not second:
        raise DataError(f"{where}: expected 1 or 3 colour channels, last (NHWC) or second "
                        f"(NCHW), got shape {x.shape}")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray | None, n: int, where: str) -> torch.Tensor | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: expected {n} integer labels, got shape {y.shape} "
                        f"dtype {y.dtype}")
    if n and y.min() < -1:
        raise DataError(f"{where}: labels must be >= 0 (-1 for unlabelled), found {y.min()}")
    return torch.from_numpy(y.astype(np.int64))
