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
``folder_canvas(image_size)`` px (the evaluation resize size: 256 for 224), with their original
(height, width) kept beside them (``ssl_zoo.data.decode``): crops are drawn in each original's
geometry, and ``image_size`` (default ``DEFAULT_FOLDER_SIZE`` = 64 px) is the size the model
sees (the default global crop and the evaluation view), not a pre-crop of the image.

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

import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_zoo.data.decode import decode_image
from ssl_zoo.data.views import EVAL_CROP_FRACTION
from ssl_zoo.errors import DataError, suggest

DEMO_PATH = Path(__file__).with_name("demo") / "cifar10_demo.npz"
DEFAULT_FOLDER_SIZE = 64
"""Working size (px) of folder images when ``image_size`` is not given."""
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".tif",
    ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".avif", ".avifs",
})
"""File suffixes (lower case) a folder source treats as images; anything else is a non-image."""
_MAX_SUBSTITUTE_TRIES = 64
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


def _from_npz(path: Path, name: str, image_size: int | None) -> DataSplits:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "x_train" not in keys:
                raise DataError(f"{path}: missing key 'x_train' (found: "
                                f"{', '.join(sorted(keys)) or 'nothing'}); expected x_train, "
                                "y_train, x_test, y_test")
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test",
                                              "classes") if k in keys}
    except DataError:
        raise
    except Exception as exc:  # not a zip, a truncated member, pickled objects
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: "
                        f"{exc})") from None
    classes = None
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
    xtr = _to_nchw(arrays["x_train"], f"{path}:x_train")
    ytr = _labels(arrays.get("y_train"), len(xtr), f"{path}:y_train")
    if image_size:
        xtr = resize_images(xtr, image_size)
    train = TensorImages(f"{name}:train", xtr, ytr, classes)
    test = None
    if "x_test" in arrays:
        xte = _to_nchw(arrays["x_test"], f"{path}:x_test")
        yte = _labels(arrays.get("y_test"), len(xte), f"{path}:y_test")
        if image_size:
            xte = resize_images(xte, image_size)
        test = TensorImages(f"{name}:test", xte, yte, classes)
        if test.image_size != train.image_size:
            raise DataError(f"{path}: train images are {train.image_size} px but test images "
                            f"{test.image_size} px; pass an image size to resize both")
    labelled = ytr is not None and bool((ytr >= 0).any())
    return DataSplits(train, train if labelled else None, test)


# --------------------------------------------------------------------------------------------
# torchvision on-disk formats (read directly; torchvision is used to download)
# --------------------------------------------------------------------------------------------
try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

_PICKLE_ALLOWED = {
    **{(m, "_reconstruct"): _np_multiarray._reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _np_multiarray.scalar
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _np_numeric._frombuffer
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _DatasetUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only (what CIFAR batches hold), so a
    tampered file cannot run code."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            out = _DatasetUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})"
                        ) from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: not a CIFAR python batch (holds a {type(out).__name__})")
    return out


def _download(name: str, root: Path) -> None:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "stl10":
            torchvision.datasets.STL10(str(root), split="train", download=True)
        else:
            cls = torchvision.datasets.CIFAR100 if name == "cifar100" else \
                torchvision.datasets.CIFAR10
            cls(str(root), download=True)
    except Exception as exc:
        raise DataError(f"downloading {name} into {root} failed ({type(exc).__name__}: {exc})"
                        ) from None


def _missing(name: str, root: Path, folder: Path) -> DataError:
    return DataError(f"{name} not found under {root} (expected {folder}/); pass --download to "
                     "fetch it there, or --data-root DIR where it already is")


def _cifar(root: Path, download: bool, hundred: bool, image_size: int | None) -> DataSplits:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    name = "cifar100" if hundred else "cifar10"
    if not folder.is_dir():
        if not download:
            raise _missing(name, root, folder)
        _download(name, root)
    if hundred:
        parts_train, parts_test, label_key = ["train"], ["test"], "fine_labels"
        meta_file, meta_key = folder / "meta", "fine_label_names"
    else:
        parts_train = [f"data_batch_{i}" for i in range(1, 6)]
        parts_test, label_key = ["test_batch"], "labels"
        meta_file, meta_key = folder / "batches.meta", "label_names"
    classes = _unpickle(meta_file).get(meta_key)
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{meta_file}: no {meta_key!r} list")
    classes = [str(c) for c in classes]

    def read(split: str, parts: list[str]) -> TensorImages:
        xs, ys = [], []
        for p in parts:
            d = _unpickle(folder / p)
            if "data" not in d or label_key not in d:
                raise DataError(f"{folder / p}: missing 'data' or {label_key!r}")
            data, y = np.asarray(d["data"]), np.asarray(d[label_key])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{folder / p}: expected uint8 rows of 3072 pixels, got "
                                f"{data.shape} {data.dtype}")
            if y.shape != (data.shape[0],) or (y.size and not 0 <= y.min() <= y.max()
                                               < len(classes)):
                raise DataError(f"{folder / p}: expected {data.shape[0]} labels in "
                                f"0..{len(classes) - 1}")
            # a row is 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(y.astype(np.int64))
        x = torch.from_numpy(np.concatenate(xs))
        if image_size:
            x = resize_images(x, image_size)
        return TensorImages(f"{name}:{split}", x, torch.from_numpy(np.concatenate(ys)), classes)

    train = read("train", parts_train)
    return DataSplits(train, train, read("test", parts_test))


_STL_BYTES = 3 * 96 * 96


def _stl10(root: Path, download: bool, image_size: int | None) -> DataSplits:
    folder = root / "stl10_binary"
    if not folder.is_dir():
        if not download:
            raise _missing("stl10", root, folder)
        _download("stl10", root)

    def count(file: str) -> int:
        path = folder / file
        if not path.is_file():
            raise DataError(f"missing file {path}")
        size = path.stat().st_size
        if size == 0 or size % _STL_BYTES:
            raise DataError(f"{path}: {size} bytes is not a whole number of 96x96 RGB images")
        return size // _STL_BYTES

    def read_into(file: str, out: torch.Tensor) -> None:
        # each image is stored channel by channel, each 96x96 plane column-major, so a record
        # read as (3, 96, 96) is (C, W, H): transpose the last two axes, a chunk at a time
        buf = np.empty((min(2048, out.shape[0]), 3, 96, 96), dtype=np.uint8)
        with open(folder / file, "rb") as fh:
            for s in range(0, out.shape[0], len(buf)):
                chunk = out[s:s + len(buf)]
                raw = buf[:chunk.shape[0]]
                if fh.readinto(raw) != raw.nbytes:
                    raise DataError(f"{folder / file}: file shorter than expected")
                chunk.copy_(torch.from_numpy(raw).transpose(2, 3))

    def labels(file: str, n: int) -> torch.Tensor:
        path = folder / file
        if not path.is_file():
            raise DataError(f"missing file {path}")
        y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
        if y.shape[0] != n:
            raise DataError(f"{path}: {y.shape[0]} labels for {n} images")
        if n and not 0 <= y.min() <= y.max() < 10:
            raise DataError(f"{path}: labels must be 1..10, found {y.min() + 1}..{y.max() + 1}")
        return torch.from_numpy(y)

    classes = [f"class{i}" for i in range(10)]
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        names = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
        if len(names) == 10:
            classes = names
    n_train, n_test = count("train_X.bin"), count("test_X.bin")
    n_unl = count("unlabeled_X.bin") if (folder / "unlabeled_X.bin").is_file() else 0
    # train and unlabeled share one buffer: the labelled split is a view of its first rows
    everything = torch.empty((n_train + n_unl, 3, 96, 96), dtype=torch.uint8)
    read_into("train_X.bin", everything[:n_train])
    if n_unl:
        read_into("unlabeled_X.bin", everything[n_train:])
    x_test = torch.empty((n_test, 3, 96, 96), dtype=torch.uint8)
    read_into("test_X.bin", x_test)
    if image_size:
        everything, x_test = resize_images(everything, image_size), resize_images(x_test,
                                                                                 image_size)
    y_train = labels("train_y.bin", n_train)
    labelled = TensorImages("stl10:train", everything[:n_train], y_train, classes)
    test = TensorImages("stl10:test", x_test, labels("test_y.bin", n_test), classes)
    ssl = labelled
    if n_unl:
        y_all = torch.cat([y_train, torch.full((n_unl,), -1, dtype=torch.long)])
        ssl = TensorImages("stl10:train+unlabeled", everything, y_all, classes)
    return DataSplits(ssl, labelled, test)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------
def folder_canvas(image_size: int) -> int:
    """Canvas side (px) folder images are decoded into for ``image_size``-px views: the
    evaluation view's resize size (256 for 224), so its centre crop of a square image is read at
    full resolution."""
    return max(image_size, int(image_size / EVAL_CROP_FRACTION))


def _why(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a format PIL can read"
    return f"{type(exc).__name__}: {exc}"


def check_image_file(path: Path) -> str | None:
    """Why ``path`` is not a usable image (cheap: suffix, header, PIL verify), or None."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file: {path} (suffix {path.suffix or 'none'!r})"
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.size[0] < 1 or im.size[1] < 1:
                    raise ValueError("no pixels")
                im.verify()
    except Exception as exc:
        return f"unreadable image: {path} ({_why(exc)})"
    return None


class FolderImages(ImageDataset):
    """Image files decoded on demand (in loader workers), whole, into ``canvas_size`` canvases,
    with their original sizes; ``image_size`` is the size the model sees.

    ``fetch`` runs in the workers; ``assemble`` runs in the main process and either raises on a
    bad file or, with ``skip_bad``, replaces it by another image of its batch.
    """

    lazy = True

    def __init__(self, name: str, files: list[Path], labels: list[int] | None,
                 classes: list[str] | None, image_size: int, *, skip_bad: bool = False,
                 skipped_at_open: int = 0, canvas_size: int | None = None):
        if not files:
            raise DataError(f"{name}: holds no images")
        self.name, self.files, self.classes, self.image_size = name, files, classes, image_size
        self.canvas_size = canvas_size or folder_canvas(image_size)
        self.labels = torch.tensor(labels, dtype=torch.long) if labels is not None else None
        self.skip_bad = skip_bad
        self.skipped_at_open = skipped_at_open
        self.bad_while_decoding: dict[int, str] = {}

    @property
    def skipped(self) -> int:  # type: ignore[override]
        return self.skipped_at_open + len(self.bad_while_decoding)

    def __len__(self) -> int:
        return len(self.files)

    def decode_or_none(self, i: int) -> tuple[torch.Tensor | None, tuple[int, int], str]:
        """Image ``i``'s canvas and original (h, w), or (None, (1, 1), why): what a worker
        sends back instead of raising."""
        try:
            img, hw = decode_image(self.files[i], self.canvas_size)
            return img, hw, ""
        except Exception as exc:
            return None, (1, 1), _why(exc)

    def fetch(self, indices: list[int]):
        """Decode a batch (in a worker): canvases, ok-mask, index, error texts, sizes."""
        c = self.canvas_size
        images = torch.zeros((len(indices), 3, c, c), dtype=torch.uint8)
        sizes = torch.ones((len(indices), 2), dtype=torch.long)
        ok = torch.ones(len(indices), dtype=torch.bool)
        errors = [""] * len(indices)
        for row, i in enumerate(indices):
            img, hw, why = self.decode_or_none(i)
            if img is None:
                ok[row], errors[row] = False, why
            else:
                images[row], sizes[row, 0], sizes[row, 1] = img, hw[0], hw[1]
        return images, ok, torch.tensor(indices, dtype=torch.long), errors, sizes

    def _bad_message(self, i: int, why: str) -> str:
        return f"unreadable image: {self.files[i]} ({why}); pass --skip-bad-images to skip " \
               "such files"

    def assemble(self, images: torch.Tensor, ok: torch.Tensor, index: torch.Tensor,
                 errors: list[str], sizes: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A decoded batch with its bad rows replaced (skip_bad) or a ``DataError`` raised.

        A bad row takes the next good row of the same batch (cyclically), with that row's index
        and size; a batch without any good row borrows the next decodable images of the dataset.
        """
        if bool(ok.all()):
            return images, index, sizes
        bad = (~ok).nonzero().flatten().tolist()
        if not self.skip_bad:
            raise DataError(self._bad_message(int(index[bad[0]]), errors[bad[0]]))
        for b in bad:
            self.bad_while_decoding[int(index[b])] = errors[b]
        good = ok.nonzero().flatten().tolist()
        images, index, sizes = images.clone(), index.clone(), sizes.clone()
        if not good:  # borrow from the dataset, in the main process (rare: tiny batches)
            j = int(index[0])
            for _ in range(min(_MAX_SUBSTITUTE_TRIES, len(self))):
                j = (j + 1) % len(self)
                img, hw, why = self.decode_or_none(j)
                if img is not None:
                    images[:], index[:] = img, j
                    sizes[:, 0], sizes[:, 1] = hw
                    return images, index, sizes
                self.bad_while_decoding[j] = why
            raise DataError(f"{self.name}: no readable image among the files after "
                            f"{self.files[int(index[0])]}")
        for b in bad:
            src = next((g for g in good if g > b), good[0])
            images[b], index[b], sizes[b] = images[src], index[src], sizes[src]
        return images, index, sizes

    def load_batch(self, index: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(canvases, index, original sizes), decoded in this process (the loader decodes in
        workers instead)."""
        return self.assemble(*self.fetch([int(i) for i in index]))

    def load(self, index: torch.Tensor) -> torch.Tensor:
        """The canvases of ``index``, decoded in this process."""
        return self.load_batch(index)[0]


def _files_under(folder: Path) -> list[Path]:
    """Every visible file below ``folder`` (following directory links), sorted by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(out)


def _scan(folder: Path, size: int, skip_bad: bool, name: str,
          classes: list[str] | None = None) -> FolderImages:
    """The images of one split folder; ``classes`` fixes the label order (a test split uses
    the training split's)."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, int | None]] = []
    if subdirs:
        names = [d.name for d in subdirs]
        if classes is None:
            classes = names
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"{folder}: class folder(s) {', '.join(unknown)} are not among "
                            f"the training classes ({', '.join(classes)})")
        for d in subdirs:
            label = classes.index(d.name)
            entries += [(f, label) for f in _files_under(d)]
    else:
        classes = None
        entries = [(f, None) for f in sorted(folder.iterdir())
                   if f.is_file() and not f.name.startswith(".")]
    good, skipped = [], 0
    for f, label in entries:
        why = check_image_file(f)
        if why is None:
            good.append((f, label))
        elif skip_bad:
            skipped += 1
        else:
            raise DataError(f"{why}; pass --skip-bad-images to skip such files")
    if not good:
        what = f"all {skipped} files are unreadable or not images" if skipped else "it is empty"
        raise DataError(f"no images found in {folder} ({what})")
    return FolderImages(name, [f for f, _ in good],
                        [lab for _, lab in good] if classes else None, classes, size,
                        skip_bad=skip_bad, skipped_at_open=skipped)


def _from_folder(path: Path, size: int | None, skip_bad: bool) -> DataSplits:
    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    size = size or DEFAULT_FOLDER_SIZE
    train_dir = path / "train"
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if train_dir.is_dir():
        train = _scan(train_dir, size, skip_bad, f"folder:{path}:train")
        test = None
        if test_dir is not None:
            test = _scan(test_dir, size, skip_bad, f"folder:{path}:{test_dir.name}",
                         train.classes)
    else:
        train, test = _scan(path, size, skip_bad, f"folder:{path}"), None
    return DataSplits(train, train if train.labels is not None else None, test)


# --------------------------------------------------------------------------------------------
# the table the registry shows, and the entry point
# --------------------------------------------------------------------------------------------
DEFAULT_DATA_ROOT = "~/.cache/ssl-zoo/data"


def default_data_root(data_root: str | None = None) -> Path:
    """``data_root``, else $SSL_ZOO_DATA, else ``~/.cache/ssl-zoo/data``."""
    return Path(data_root or os.environ.get("SSL_ZOO_DATA") or DEFAULT_DATA_ROOT).expanduser()


def build_demo(*, image_size: int | None = None, **_) -> DataSplits:
    """The embedded demo set (real CIFAR-10 images, see ``demo/README.md``)."""
    if not DEMO_PATH.is_file():
        raise DataError(f"the embedded demo set is missing ({DEMO_PATH}); reinstall ssl-zoo")
    return _from_npz(DEMO_PATH, "demo", image_size)


def build_npz(arg: str, *, image_size: int | None = None, **_) -> DataSplits:
    """A ``.npz`` archive with x_train (and optionally y_train, x_test, y_test, classes)."""
    return _from_npz(Path(arg).expanduser(), f"npz:{arg}", image_size)


def build_cifar10(*, data_root: str | None = None, download: bool = False,
                  image_size: int | None = None, **_) -> DataSplits:
    """CIFAR-10 from ``cifar-10-batches-py`` (Krizhevsky 2009)."""
    return _cifar(default_data_root(data_root), download, False, image_size)


def build_cifar100(*, data_root: str | None = None, download: bool = False,
                   image_size: int | None = None, **_) -> DataSplits:
    """CIFAR-100 (fine labels) from ``cifar-100-python``."""
    return _cifar(default_data_root(data_root), download, True, image_size)


def build_stl10(*, data_root: str | None = None, download: bool = False,
                image_size: int | None = None, **_) -> DataSplits:
    """STL-10 from ``stl10_binary`` (Coates et al. 2011)."""
    return _stl10(default_data_root(data_root), download, image_size)


def build_folder(arg: str, *, image_size: int | None = None, skip_bad_images: bool = False,
                 **_) -> DataSplits:
    """A folder of image files (class sub-folders = labels)."""
    return _from_folder(Path(arg).expanduser(), image_size, skip_bad_images)


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
