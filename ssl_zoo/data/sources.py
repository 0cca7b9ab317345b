"""Dataset sources: everything becomes uint8 image batches (N, 3, S, S) plus labels where known.

Spec strings: ``demo``, ``npz:PATH``, ``cifar10``, ``cifar100``, ``stl10``, ``folder:PATH``.
Small sets live in memory as one uint8 tensor; image folders are decoded lazily (in loader
workers) and resized to a fixed working size.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssl_zoo.errors import DataError, suggest

DEMO_PATH = Path(__file__).with_name("demo") / "cifar10_demo.npz"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
DEFAULT_FOLDER_SIZE = 64


class ImageDataset:
    """Images addressed by index; ``load(index)`` returns uint8 (b, 3, S, S) on the CPU."""

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


class TensorImages(ImageDataset):
    """An in-memory uint8 (N, 3, S, S) tensor with optional int64 labels."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor | None = None,
                 classes: list[str] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"{name}: expected uint8 images (N, 3, H, W), got "
                            f"{tuple(images.shape)} {images.dtype}")
        if images.shape[2] != images.shape[3]:
            raise DataError(f"{name}: images must be square, got {tuple(images.shape[2:])}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise DataError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.name, self.images, self.classes = name, images.contiguous(), classes
        self.labels = labels.long() if labels is not None else None
        self.image_size = int(images.shape[-1])

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]


@dataclass
class DataSplits:
    train: ImageDataset
    """What self-supervised training iterates."""
    eval_train: ImageDataset | None
    """Labelled images for the kNN memory bank and the linear probe."""
    test: ImageDataset | None


# --------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------
def _to_nchw(x: np.ndarray, where: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels, got {x.dtype}")
    if x.ndim != 4:
        raise DataError(f"{where}: expected 4-d images (N, H, W, 3), got shape {x.shape}")
    if x.shape[-1] == 3:
        x = x.transpose(0, 3, 1, 2)
    elif x.shape[1] != 3:
        raise DataError(f"{where}: expected 3 colour channels (NHWC or NCHW), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray | None, n: int, where: str) -> torch.Tensor | None:
    if y is None:
        return None
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: expected {n} integer labels, got {y.shape} {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))


def _from_npz(path: Path, name: str) -> DataSplits:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    if "x_train" not in keys:
        raise DataError(f"{path}: missing key 'x_train' (found: {', '.join(sorted(keys))}); "
                        "expected x_train, y_train, x_test, y_test")
    classes = [str(c) for c in archive["classes"]] if "classes" in keys else None
    xtr = _to_nchw(archive["x_train"], f"{path}:x_train")
    ytr = _labels(archive["y_train"] if "y_train" in keys else None, len(xtr), f"{path}:y_train")
    train = TensorImages(f"{name}:train", xtr, ytr, classes)
    test = None
    if "x_test" in keys:
        xte = _to_nchw(archive["x_test"], f"{path}:x_test")
        yte = _labels(archive["y_test"] if "y_test" in keys else None, len(xte),
                      f"{path}:y_test")
        test = TensorImages(f"{name}:test", xte, yte, classes)
        if test.image_size != train.image_size:
            raise DataError(f"{path}: train and test images differ in size")
    return DataSplits(train, train if ytr is not None else None, test)


# --------------------------------------------------------------------------------------------
# torchvision on-disk formats (read directly; torchvision is used to download)
# --------------------------------------------------------------------------------------------
def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")  # noqa: S301 - the dataset's own format
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({type(exc).__name__})") from None


def _cifar(root: Path, download: bool, hundred: bool) -> DataSplits:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    name = "cifar100" if hundred else "cifar10"
    if not folder.is_dir():
        if not download:
            raise DataError(f"{name} not found under {root} (expected {folder}); pass --download "
                            "or point --data-root at it")
        import torchvision

        cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
        try:
            cls(str(root), download=True)
        except Exception as exc:
            raise DataError(f"downloading {name} failed: {exc}") from None
    if hundred:
        parts_train, parts_test, label_key = ["train"], ["test"], "fine_labels"
        meta = _unpickle(folder / "meta").get("fine_label_names")
    else:
        parts_train = [f"data_batch_{i}" for i in range(1, 6)]
        parts_test, label_key = ["test_batch"], "labels"
        meta = _unpickle(folder / "batches.meta").get("label_names")

    def read(parts: list[str]) -> TensorImages:
        xs, ys = [], []
        for p in parts:
            d = _unpickle(folder / p)
            data = np.asarray(d.get("data"))
            if data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{folder / p}: expected rows of 3072 pixels, got {data.shape}")
            xs.append(data.reshape(-1, 3, 32, 32).astype(np.uint8))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return TensorImages(name, torch.from_numpy(np.concatenate(xs)),
                            torch.from_numpy(np.concatenate(ys)), meta)

    train = read(parts_train)
    return DataSplits(train, train, read(parts_test))


def _stl10(root: Path, download: bool) -> DataSplits:
    folder = root / "stl10_binary"
    if not folder.is_dir():
        if not download:
            raise DataError(f"stl10 not found under {root} (expected {folder}); pass --download "
                            "or point --data-root at it")
        import torchvision

        try:
            torchvision.datasets.STL10(str(root), split="train", download=True)
        except Exception as exc:
            raise DataError(f"downloading stl10 failed: {exc}") from None

    def images(name: str) -> torch.Tensor:
        path = folder / name
        if not path.is_file():
            raise DataError(f"missing file {path}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise DataError(f"{path}: size is not a multiple of one 96x96 RGB image")
        # stored column-major per channel: (N, 3, W, H) -> transpose to (N, 3, H, W)
        return torch.from_numpy(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy())

    def labels(name: str, n: int) -> torch.Tensor:
        y = np.fromfile(folder / name, dtype=np.uint8).astype(np.int64) - 1
        if y.shape[0] != n:
            raise DataError(f"{folder / name}: {y.shape[0]} labels for {n} images")
        return torch.from_numpy(y)

    classes = None
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        classes = [c for c in names_file.read_text().split() if c]
    xtr = images("train_X.bin")
    train = TensorImages("stl10:train", xtr, labels("train_y.bin", len(xtr)), classes)
    xte = images("test_X.bin")
    test = TensorImages("stl10:test", xte, labels("test_y.bin", len(xte)), classes)
    ssl = train
    if (folder / "unlabeled_X.bin").is_file():
        unl = images("unlabeled_X.bin")
        ssl = TensorImages("stl10:train+unlabeled", torch.cat([xtr, unl]),
                           torch.cat([train.labels, torch.full((len(unl),), -1)]), classes)
    return DataSplits(ssl, train, test)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------
def _decode(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (3, size, size): shorter side resized to ``size``, centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


class FolderImages(ImageDataset):
    """Image files decoded on demand (in loader workers) and resized to ``image_size``."""

    lazy = True

    def __init__(self, name: str, files: list[Path], labels: list[int] | None,
                 classes: list[str] | None, image_size: int):
        self.name, self.files, self.classes, self.image_size = name, files, classes, image_size
        self.labels = torch.tensor(labels, dtype=torch.long) if labels is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            return torch.from_numpy(_decode(path, self.image_size))
        except Exception as exc:
            raise DataError(f"unreadable image {path}: {type(exc).__name__}") from None

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.decode(int(i)) for i in index])


def _verify(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def _scan(folder: Path, size: int, skip_bad: bool, name: str) -> FolderImages:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, int | None]] = []
    if subdirs:
        classes = [d.name for d in subdirs]
        for label, d in enumerate(subdirs):
            entries += [(f, label) for f in sorted(d.rglob("*")) if f.is_file()
                        and not f.name.startswith(".")]
    else:
        classes = None
        entries = [(f, None) for f in sorted(folder.iterdir()) if f.is_file()
                   and not f.name.startswith(".")]
    good, skipped = [], 0
    for f, label in entries:
        if f.suffix.lower() in IMAGE_SUFFIXES and _verify(f):
            good.append((f, label))
        elif skip_bad:
            skipped += 1
        else:
            kind = "not an image" if f.suffix.lower() not in IMAGE_SUFFIXES else "unreadable image"
            raise DataError(f"{kind}: {f} (pass --skip-bad-images to skip such files)")
    if not good:
        raise DataError(f"no images found in {folder}")
    ds = FolderImages(name, [f for f, _ in good],
                      [lab for _, lab in good] if classes else None, classes, size)
    ds.skipped = skipped
    return ds


def _from_folder(path: Path, size: int | None, skip_bad: bool) -> DataSplits:
    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    size = size or DEFAULT_FOLDER_SIZE
    train_dir = path / "train"
    test_dir = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        train = _scan(train_dir, size, skip_bad, f"folder:{path}:train")
        test = _scan(test_dir, size, skip_bad, f"folder:{path}:{test_dir.name}")
    else:
        train, test = _scan(path, size, skip_bad, f"folder:{path}"), None
    return DataSplits(train, train if train.labels is not None else None, test)


# --------------------------------------------------------------------------------------------
# the table the registry shows, and the entry point
# --------------------------------------------------------------------------------------------
def _default_root(data_root: str | None) -> Path:
    return Path(data_root).expanduser() if data_root else Path.home() / ".cache/ssl-zoo/data"


SOURCES: dict[str, tuple[Callable[..., DataSplits], str]] = {
    "demo": (lambda **_: _from_npz(DEMO_PATH, "demo"),
             "embedded: 2,000 train / 1,000 test real CIFAR-10 images (offline)"),
    "npz": (lambda arg, **_: _from_npz(Path(arg).expanduser(), f"npz:{arg}"),
            "npz:PATH with x_train, y_train, x_test, y_test (uint8 NHWC)"),
    "cifar10": (lambda data_root=None, download=False, **_: _cifar(_default_root(data_root),
                                                                   download, False),
                "CIFAR-10 (torchvision format; --data-root, --download)"),
    "cifar100": (lambda data_root=None, download=False, **_: _cifar(_default_root(data_root),
                                                                    download, True),
                 "CIFAR-100 (torchvision format; --data-root, --download)"),
    "stl10": (lambda data_root=None, download=False, **_: _stl10(_default_root(data_root),
                                                                 download),
              "STL-10 96 px: train+unlabeled for training, train/test for evaluation"),
    "folder": (lambda arg, image_size=None, skip_bad_images=False, **_:
               _from_folder(Path(arg).expanduser(), image_size, skip_bad_images),
               "folder:PATH of images (class sub-folders = labels; train/ and test/ splits)"),
}
_NEEDS_ARG = {"npz", "folder"}


def open_source(spec: str, *, data_root: str | None = None, download: bool = False,
                image_size: int | None = None, skip_bad_images: bool = False) -> DataSplits:
    """The dataset named by ``spec`` (e.g. ``demo``, ``npz:/data/x.npz``, ``folder:imgs``)."""
    kind, sep, arg = spec.partition(":")
    if kind not in SOURCES:
        raise DataError(suggest(kind, SOURCES, "dataset source"))
    if kind in _NEEDS_ARG and not arg:
        raise DataError(f"dataset source {kind!r} needs a path: {kind}:PATH")
    builder = SOURCES[kind][0]
    kwargs = dict(data_root=data_root, download=download, image_size=image_size,
                  skip_bad_images=skip_bad_images)
    return builder(arg, **kwargs) if kind in _NEEDS_ARG else builder(**kwargs)
