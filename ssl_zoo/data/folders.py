"""Folders of image files: whole images decoded at reduced size, in the loader's workers, into a
canvas with their original sizes; bad files named or skipped (see ``ssl_zoo.data.sources``).
The canvas side comes from the crops a run asks for (:func:`run_canvas`)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch

from ssl_zoo.data.datasets import DataSplits, ImageDataset
from ssl_zoo.data.decode import decode_image, decode_on_device, read_for_device
from ssl_zoo.data.views import EVAL_CROP_FRACTION, ViewSpec
from ssl_zoo.errors import DataError

DEFAULT_FOLDER_SIZE = 64
"""Working size (px) of folder images when ``image_size`` is not given."""
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".webp", ".tif",
    ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi", ".avif", ".avifs",
})
"""File suffixes (lower case) a folder source treats as images; anything else is a non-image."""
_MAX_SUBSTITUTE_TRIES = 64


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------
def folder_canvas(image_size: int) -> int:
    """Canvas side (px) folder images are decoded into for ``image_size``-px views when the
    crops are not known (``open_source``; ``canvas=eval``): the evaluation view's resize size
    (256 for 224), so its centre crop of a square image is read at full resolution."""
    return max(image_size, int(image_size / EVAL_CROP_FRACTION))


def crop_canvas(size: int, min_scale: float) -> int:
    """Canvas side (px) at which every crop of ``size`` px and area fraction >= ``min_scale``
    still reads >= ``size`` canvas pixels across (geometric mean of its two sides): the crop
    covers ``min_scale`` of the canvas' C^2 pixels, sqrt(min_scale) * C >= size, so
    C = ceil(size / sqrt(min_scale)) (224 px at 0.14: 599; 96 px at 0.05: 430)."""
    return math.ceil(size / math.sqrt(min_scale) - 1e-9)  # 1e-9: 32 / sqrt(0.25) is 64


def canvas_for_views(spec: ViewSpec, image_size: int) -> int:
    """The ``canvas=auto`` side (px) for a run's crops: the largest :func:`crop_canvas` of its
    crop groups, and at least the evaluation canvas (:func:`folder_canvas`)."""
    return max([folder_canvas(image_size)]
               + [crop_canvas(g.size, g.scale[0]) for g in spec.groups if g.count > 0])


def run_canvas(canvas: int | str, spec: ViewSpec, image_size: int) -> int:
    """The canvas side (px) of ``canvas``: ``auto`` (:func:`canvas_for_views`), ``eval`` (the
    evaluation canvas, what runs made before ``canvas`` existed used) or a side in px."""
    if canvas == "auto":
        return canvas_for_views(spec, image_size)
    if canvas == "eval":
        return folder_canvas(image_size)
    return int(canvas)


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
    bad file or, with ``skip_bad``, replaces it by another image of its batch (split in two,
    ``substitute`` in a worker and ``account`` here, when the workers make the views).
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

    def use_canvas(self, side: int) -> str | None:
        """Decode into ``side``-px canvases from now on (the run's canvas: ``run_canvas``)."""
        self.canvas_size = side
        return None

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

    def fetch_encoded(self, indices: list[int]):
        """A batch for decoding on the training device (in a worker): per row the JPEG's bytes
        or a canvas decoded here (:func:`~ssl_zoo.data.decode.read_for_device`; None when the
        file cannot be read), ok-mask, index, error texts."""
        payloads: list = []
        ok = torch.ones(len(indices), dtype=torch.bool)
        errors = [""] * len(indices)
        for row, i in enumerate(indices):
            try:
                payloads.append(read_for_device(self.files[i], self.canvas_size))
            except Exception as exc:
                payloads.append(None)
                ok[row], errors[row] = False, _why(exc)
        return payloads, ok, torch.tensor(indices, dtype=torch.long), errors

    def assemble_encoded(self, payloads: list, ok: torch.Tensor, index: torch.Tensor,
                         errors: list[str], device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A :meth:`fetch_encoded` batch decoded on ``device`` (in the main process), then as
        :meth:`assemble`: canvases and sizes on ``device``, bad rows replaced or raised."""
        images, sizes = decode_on_device(payloads, self.canvas_size, device, ok, errors)
        return self.assemble(images, ok, index, errors, sizes)

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
        images, index, sizes, report = self.substitute(images, ok, index, errors, sizes)
        self.account(report)
        return images, index, sizes

    def substitute(self, images: torch.Tensor, ok: torch.Tensor, index: torch.Tensor,
                   errors: list[str], sizes: torch.Tensor):
        """``assemble``'s replacement without raising or recording (it may run in a worker):
        (images, index, sizes, report), the report (bad files as {index: why}, the error that
        ends the run or "") for :meth:`account` in the main process. Without ``skip_bad`` the
        batch is left as it is: ``account`` raises on its first bad file."""
        bad = (~ok).nonzero().flatten().tolist()
        found = {int(index[b]): errors[b] for b in bad}
        if not bad or not self.skip_bad:
            return images, index, sizes, (found, "")
        good = ok.nonzero().flatten().tolist()
        images, index, sizes = images.clone(), index.clone(), sizes.clone()
        if not good:  # borrow from the dataset (rare: tiny batches)
            j = int(index[0])
            for _ in range(min(_MAX_SUBSTITUTE_TRIES, len(self))):
                j = (j + 1) % len(self)
                img, hw, why = self.decode_or_none(j)
                if img is not None:
                    images[:], index[:] = img, j
                    sizes[:, 0], sizes[:, 1] = hw
                    return images, index, sizes, (found, "")
                found[j] = why
            return images, index, sizes, (found, f"{self.name}: no readable image among the "
                                                 f"files after {self.files[int(index[0])]}")
        for b in bad:
            src = next((g for g in good if g > b), good[0])
            images[b], index[b], sizes[b] = images[src], index[src], sizes[src]
        return images, index, sizes, (found, "")

    def account(self, report: tuple[dict[int, str], str]) -> None:
        """Raise on the first bad file of a :meth:`substitute` report (without ``skip_bad``) or
        record its bad files; raise when the batch found no readable image at all."""
        found, failure = report
        if found and not self.skip_bad:
            i, why = next(iter(found.items()))
            raise DataError(self._bad_message(i, why))
        self.bad_while_decoding.update(found)
        if failure:
            raise DataError(failure)

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


def build_folder(arg: str, *, image_size: int | None = None, skip_bad_images: bool = False,
                 **_) -> DataSplits:
    """A folder of image files (class sub-folders = labels)."""
    return _from_folder(Path(arg).expanduser(), image_size, skip_bad_images)
