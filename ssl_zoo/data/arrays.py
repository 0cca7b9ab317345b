"""In-memory sources: the embedded demo set and ``npz:PATH`` archives."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_zoo.data.datasets import DataSplits, TensorImages, _labels, _to_nchw, resize_images
from ssl_zoo.errors import DataError

DEMO_PATH = Path(__file__).with_name("demo") / "cifar10_demo.npz"


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


def build_demo(*, image_size: int | None = None, **_) -> DataSplits:
    """The embedded demo set (real CIFAR-10 images, see ``demo/README.md``)."""
    if not DEMO_PATH.is_file():
        raise DataError(f"the embedded demo set is missing ({DEMO_PATH}); reinstall ssl-zoo")
    return _from_npz(DEMO_PATH, "demo", image_size)


def build_npz(arg: str, *, image_size: int | None = None, **_) -> DataSplits:
    """A ``.npz`` archive with x_train (and optionally y_train, x_test, y_test, classes)."""
    return _from_npz(Path(arg).expanduser(), f"npz:{arg}", image_size)
