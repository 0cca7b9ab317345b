"""CIFAR-10/100 and STL-10 in the on-disk formats torchvision downloads, read directly (no md5
pass over the files; torchvision is used only to download them)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ssl_zoo.data.datasets import DataSplits, TensorImages, resize_images
from ssl_zoo.errors import DataError

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


def _stl_count(folder: Path, file: str) -> int:
    """How many 96x96 RGB images the binary ``file`` holds (one-line error when not whole)."""
    path = folder / file
    if not path.is_file():
        raise DataError(f"missing file {path}")
    size = path.stat().st_size
    if size == 0 or size % _STL_BYTES:
        raise DataError(f"{path}: {size} bytes is not a whole number of 96x96 RGB images")
    return size // _STL_BYTES


def _stl_read_into(folder: Path, file: str, out: torch.Tensor) -> None:
    """Read the images of ``file`` into ``out`` (N, 3, 96, 96), a chunk at a time."""
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


def _stl_labels(folder: Path, file: str, n: int) -> torch.Tensor:
    """The ``n`` labels of ``file`` as 0..9 (stored as 1..10), checked."""
    path = folder / file
    if not path.is_file():
        raise DataError(f"missing file {path}")
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if y.shape[0] != n:
        raise DataError(f"{path}: {y.shape[0]} labels for {n} images")
    if n and not 0 <= y.min() <= y.max() < 10:
        raise DataError(f"{path}: labels must be 1..10, found {y.min() + 1}..{y.max() + 1}")
    return torch.from_numpy(y)


def _stl_classes(folder: Path) -> list[str]:
    """The 10 names of class_names.txt, or class0..class9 without a usable one."""
    classes = [f"class{i}" for i in range(10)]
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        names = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
        if len(names) == 10:
            classes = names
    return classes


def _stl10(root: Path, download: bool, image_size: int | None) -> DataSplits:
    folder = root / "stl10_binary"
    if not folder.is_dir():
        if not download:
            raise _missing("stl10", root, folder)
        _download("stl10", root)
    classes = _stl_classes(folder)
    n_train, n_test = _stl_count(folder, "train_X.bin"), _stl_count(folder, "test_X.bin")
    n_unl = _stl_count(folder, "unlabeled_X.bin") if (folder / "unlabeled_X.bin").is_file() else 0
    # train and unlabeled share one buffer: the labelled split is a view of its first rows
    everything = torch.empty((n_train + n_unl, 3, 96, 96), dtype=torch.uint8)
    _stl_read_into(folder, "train_X.bin", everything[:n_train])
    if n_unl:
        _stl_read_into(folder, "unlabeled_X.bin", everything[n_train:])
    x_test = torch.empty((n_test, 3, 96, 96), dtype=torch.uint8)
    _stl_read_into(folder, "test_X.bin", x_test)
    if image_size:
        everything, x_test = resize_images(everything, image_size), resize_images(x_test,
                                                                                 image_size)
    y_train = _stl_labels(folder, "train_y.bin", n_train)
    labelled = TensorImages("stl10:train", everything[:n_train], y_train, classes)
    test = TensorImages("stl10:test", x_test, _stl_labels(folder, "test_y.bin", n_test), classes)
    ssl = labelled
    if n_unl:
        y_all = torch.cat([y_train, torch.full((n_unl,), -1, dtype=torch.long)])
        ssl = TensorImages("stl10:train+unlabeled", everything, y_all, classes)
    return DataSplits(ssl, labelled, test)


DEFAULT_DATA_ROOT = "~/.cache/ssl-zoo/data"


def default_data_root(data_root: str | None = None) -> Path:
    """``data_root``, else $SSL_ZOO_DATA, else ``~/.cache/ssl-zoo/data``."""
    return Path(data_root or os.environ.get("SSL_ZOO_DATA") or DEFAULT_DATA_ROOT).expanduser()


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
