"""Dataset sources: every source becomes square uint8 images (3, S, S) plus labels where known,
and, for real-size images (folders, prepared stores), each image's original size.

Spec strings (``open_source``):

- ``demo``: the embedded 2,000 / 1,000 CIFAR-10 images (``demo/README.md``), offline.
- ``npz:PATH``: ``x_train`` (required), ``y_train``, ``x_test``, ``y_test``, ``classes``
  (optional); uint8 images NHWC (N, H, W, 3), or NCHW when the layout is unambiguous, or
  grey (N, H, W) / (N, H, W, 1); integer labels, -1 for unlabelled images.
- ``cifar10`` / ``cifar100``: the python pickle batches torchvision downloads
  (``cifar-10-batches-py/``, ``cifar-100-python/``) under ``--data-root``.
- ``stl10``: ``stl10_binary/*.bin``; training iterates train + unlabeled (105,000 images),
  the kNN memory and the linear probe use the 5,000 labelled train images, test is test.
- ``folder:PATH``: image files; class sub-folders become labels (sorted names), a flat folder is
  unlabelled; ``PATH/train`` with ``PATH/test`` (or ``PATH/val``) become the splits.
- ``prepared:DIR``: a store ``ssl-zoo prepare`` wrote (``ssl_zoo.data.prepared``).

In-memory sources are one uint8 tensor and index in the main process; ``image_size`` resizes
them once, at open time, when it differs from theirs, and they are their own originals. Folder
images are decoded lazily, in the loader's worker processes, whole, into a square canvas of
``folder_canvas(image_size)`` px (the evaluation resize size: 256 for 224) when opened alone, and
of the run's ``canvas`` once its crops are known (``folders.run_canvas``; ``auto``: enough
pixels for the smallest crop of each group, 599 for SwAV's 2x224 at scale 0.14), with their
original (height, width) kept beside them (``ssl_zoo.data.decode``): crops are drawn in each
original's geometry, and ``image_size`` (default ``DEFAULT_FOLDER_SIZE`` = 64 px) is the size the
model sees (the default global crop and the evaluation view), not a pre-crop of the image.

Bad folder files are found in two layers. At open time each file is checked cheaply (its
suffix, then a PIL header parse and ``Image.verify``; about 30 us per JPEG, 90 us per PNG,
against 1-4 ms to decode one): this catches non-images, empty and garbled files. A file that
passes but fails to decode (e.g. a truncated JPEG body) is caught in the worker that decodes
it. Without ``skip_bad_images`` either raises a ``DataError`` naming the file. With it, the file
is skipped at open time, or, when found while decoding, replaced in its batch by another image of
the same batch (so every batch keeps its size on every rank); ``dataset.skipped`` counts both.
CIFAR/STL-10 are read from their documented on-disk formats directly (no md5 pass over the
files); torchvision is used only to download them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ssl_zoo.data.arrays import DEMO_PATH, build_demo, build_npz
from ssl_zoo.data.datasets import DataSplits, ImageDataset, TensorImages, resize_images
from ssl_zoo.data.folders import (
    DEFAULT_FOLDER_SIZE,
    IMAGE_SUFFIXES,
    FolderImages,
    build_folder,
    check_image_file,
    folder_canvas,
)
from ssl_zoo.data.torchvision_sets import (
    build_cifar10,
    build_cifar100,
    build_stl10,
    default_data_root,
)
from ssl_zoo.errors import DataError, suggest

__all__ = ["DEFAULT_FOLDER_SIZE", "DEMO_PATH", "IMAGE_SUFFIXES", "NEEDS_PATH", "SOURCES",
           "DataSplits", "FolderImages", "ImageDataset", "TensorImages", "check_image_file",
           "default_data_root", "folder_canvas", "open_source", "register_source",
           "resize_images"]


# --------------------------------------------------------------------------------------------
# the table the registry shows, and the entry point (one module per family of sources)
# --------------------------------------------------------------------------------------------
SOURCES: dict[str, tuple[Callable[..., DataSplits], str]] = {
    "demo": (build_demo, "embedded: 2,000 train / 1,000 test real CIFAR-10 images, 32 px "
                         "(offline)"),
    "npz": (build_npz, "npz:PATH with x_train, y_train, x_test, y_test (uint8 NHWC)"),
    "cifar10": (build_cifar10, "CIFAR-10, 32 px (--data-root, --download)"),
    "cifar100": (build_cifar100, "CIFAR-100 fine labels, 32 px (--data-root, --download)"),
    "stl10": (build_stl10, "STL-10, 96 px: train+unlabeled for training, labelled train and "
                           "test for evaluation (--data-root, --download)"),
    "folder": (build_folder, "folder:PATH of images: class sub-folders = labels, train/ and "
                             f"test/ (or val/) = splits; whole images, crops in their own "
                             f"geometry; views of {DEFAULT_FOLDER_SIZE} px unless image_size is "
                             "set"),
}
NEEDS_PATH = {"npz", "folder"}
"""Sources whose spec is ``kind:PATH``."""


def register_source(kind: str, builder: Callable[..., DataSplits], description: str, *,
                    needs_path: bool) -> None:
    """Add a source kind (``ssl_zoo.data.prepared`` registers ``prepared:`` this way);
    ``builder(arg, **options)`` when ``needs_path``, else ``builder(**options)``."""
    SOURCES[kind] = (builder, description)
    if needs_path:
        NEEDS_PATH.add(kind)


def open_source(spec: str, *, data_root: str | None = None, download: bool = False,
                image_size: int | None = None, skip_bad_images: bool = False) -> DataSplits:
    """The splits of the dataset named by ``spec`` (``demo``, ``npz:x.npz``, ``folder:imgs``,
    ``cifar10``, ...); ``image_size`` is the working size in px (None: the source's own; 64
    for folders)."""
    kind, _, arg = spec.partition(":")
    if kind not in SOURCES:
        hint = ""
        if spec.endswith(".npz") or Path(spec).expanduser().is_dir():
            hint = f" (for a file or folder write npz:{spec} or folder:{spec})"
        raise DataError(suggest(kind, SOURCES, "dataset source") + hint)
    if kind in NEEDS_PATH and not arg:
        raise DataError(f"dataset source {kind!r} needs a path: {kind}:PATH")
    if kind not in NEEDS_PATH and arg:
        raise DataError(f"dataset source {kind!r} takes no path (got {spec!r}); use "
                        "--data-root to say where it is")
    if image_size is not None and image_size < 1:
        if image_size == 0:
            image_size = None
        else:
            raise DataError(f"image size must be >= 1 px, got {image_size}")
    builder = SOURCES[kind][0]
    kwargs = dict(data_root=data_root, download=download, image_size=image_size,
                  skip_bad_images=skip_bad_images)
    return builder(arg, **kwargs) if kind in NEEDS_PATH else builder(**kwargs)
