"""A prepared store: an image folder decoded once into memory-mapped uint8 canvases.

``ssl-zoo prepare folder:PATH --out DIR`` decodes every image of the folder (its train/ and
test/ or val/ splits, class sub-folders as labels) into the canvas layout of
``ssl_zoo.data.decode`` (the whole image stretched to ``canvas`` x ``canvas``, its original
size kept; ``DEFAULT_CANVAS`` px unless ``--canvas`` says otherwise), and ``--dataset
prepared:DIR`` trains from it with no image decoding at all; the crops are still drawn in each
original's geometry (a run whose crops ask for a larger canvas says so once). Layout of DIR::

    manifest.json          written last, atomically: format, version, canvas, classes, the
                           source's fingerprint, per split its image count, skipped rows (and
                           bad files left out before), each file's byte size and sha256; its
                           own sha256 inside
    <split>/images.npy     uint8 (N, 3, canvas, canvas), memory-mapped (rows of skipped files
                           stay zero and are never read)
    <split>/sizes.npy      int32 (N, 2) original (height, width)
    <split>/labels.npy     int64 (N,), -1 where unlabelled
    progress.json          only while preparing: the fingerprint and the rows written so far

A prepare that is interrupted resumes from its last written chunk when run again on the same
folder and canvas (else it starts clean); without manifest.json a DIR is never taken for a
store. Opening checks the manifest's checksum, every file's size and the sha256 of the small
files; the images' sha256 too when they are at most ``VERIFY_IMAGES_BYTES`` (a full read of a
large store at every start would cost minutes). Reading a store (the manifest checks, the
dataset) is ``ssl_zoo.data.prepared_store``; this module writes stores and registers the
``prepared:`` source.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ssl_zoo.data.folders import crop_canvas
from ssl_zoo.data.loader import fetch_in_workers
from ssl_zoo.data.prepared_store import (
    FORMAT,
    MANIFEST,
    PROGRESS,
    STORE_FILES,
    VERSION,
    manifest_digest,
    open_prepared,
    read_manifest,
    sha256_file,
)
from ssl_zoo.data.sources import (
    DEFAULT_FOLDER_SIZE,
    DataSplits,
    FolderImages,
    open_source,
    register_source,
)
from ssl_zoo.errors import DataError

DEFAULT_CANVAS = crop_canvas(224, 0.14)
"""Canvas side (px) of ``ssl-zoo prepare``: 599, enough pixels for 224-px crops of area
fraction >= 0.14 (SwAV's ImageNet global crops; its 96-px local crops at 0.05 need 430), what
``canvas=auto`` asks for with those crops (``folders.crop_canvas``). Crops at MoCo v2 /
SimCLR's 0.08 would ask for 792; a run whose crops ask for more than its store holds says so."""
CHUNK_IMAGES = 256
"""Images decoded and written between two progress records."""
_FILES = STORE_FILES
"""The files of each split (``prepared_store.STORE_FILES``)."""


def build_prepared(arg: str, *, image_size: int | None = None, **_) -> DataSplits:
    """A store written by ``ssl-zoo prepare``."""
    return open_prepared(arg, image_size)


register_source("prepared", build_prepared,
                "prepared:DIR written by `ssl-zoo prepare folder:PATH --out DIR`: no decoding, "
                f"crops in each original's geometry; views of {DEFAULT_FOLDER_SIZE} px unless "
                "image_size is set", needs_path=True)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fingerprint(folder: Path, splits: dict[str, FolderImages], canvas: int) -> str:
    """What the store is made of: the folder, the canvas, and every file's path and size."""
    h = hashlib.sha256(json.dumps([str(folder.resolve()), canvas, VERSION]).encode())
    for name, ds in splits.items():
        h.update(name.encode())
        for f in ds.files:
            h.update(f"{f.relative_to(folder)}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()


def _clean(store: Path, split_names: list[str]) -> None:
    """Remove what a prepare writes (and nothing else)."""
    for name in (MANIFEST, PROGRESS, MANIFEST + ".tmp", PROGRESS + ".tmp"):
        (store / name).unlink(missing_ok=True)
    for split in split_names:
        for file in _FILES:
            (store / split / file).unlink(missing_ok=True)


def _chunks(start: int, stop: int) -> list[list[int]]:
    return [list(range(a, min(a + CHUNK_IMAGES, stop))) for a in range(start, stop, CHUNK_IMAGES)]


def prepare(spec: str, out: str | Path, *, canvas: int | None = None, workers: int = 2,
            skip_bad_images: bool = False, overwrite: bool = False, console=None,
            show_progress: bool = True) -> dict[str, Any]:
    """Decode the image folder ``spec`` (``folder:PATH``) into a prepared store at ``out``;
    returns its manifest (with ``"status"``: prepared, resumed or up to date)."""
    canvas = _check_prepare_args(spec, canvas, workers)
    folder, store = Path(spec.partition(":")[2]).expanduser(), Path(out).expanduser()
    data = open_source(spec, skip_bad_images=skip_bad_images)
    splits = _source_splits(data, canvas)
    fp = _fingerprint(folder, splits, canvas)
    status, done, skipped, current = _starting_point(store, splits, fp, overwrite)
    if current is not None:
        return {**current, "status": "up to date"}
    if status == "prepared":  # recorded before any array exists, so a crash resumes or cleans
        store.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(store / PROGRESS, {"fingerprint": fp, "done": done,
                                              "skipped_rows": skipped})
    arrays = _open_arrays(store, splits, canvas, fresh=status == "prepared")
    with _progress_bar(console, show_progress) as bar:
        task = bar.add_task(f"prepare {folder.name}", total=sum(len(ds) for ds in splits.values()),
                            completed=sum(done.values())) if bar else None
        for split, ds in splits.items():
            for batch in _decoded(ds, _chunks(done[split], len(ds)), workers):
                rows = _write_chunk(ds, arrays[split], batch, skipped[split], skip_bad_images)
                done[split] = int(rows[-1]) + 1
                _write_json_atomic(store / PROGRESS, {"fingerprint": fp, "done": done,
                                                      "skipped_rows": skipped})
                if bar:
                    bar.advance(task, len(rows))
    del arrays
    manifest = _write_manifest(store, folder, canvas, fp, data.train.classes, splits, skipped)
    (store / PROGRESS).unlink(missing_ok=True)
    return {**manifest, "status": status}


def _check_prepare_args(spec: str, canvas: int | None, workers: int) -> int:
    """One-line errors for a bad ``ssl-zoo prepare`` command line; the canvas to use."""
    kind, _, arg = spec.partition(":")
    if kind != "folder" or not arg:
        raise DataError(f"prepare reads an image folder: write folder:PATH (got {spec!r})")
    canvas = DEFAULT_CANVAS if canvas is None else canvas
    if canvas < 1:
        raise DataError(f"--canvas must be >= 1 px, got {canvas}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    return canvas


def _source_splits(data: DataSplits, canvas: int) -> dict[str, FolderImages]:
    """The folder's splits by name (train, and test or val), decoding onto ``canvas``."""
    splits: dict[str, FolderImages] = {"train": data.train}
    if data.test is not None:
        splits[data.test.name.rsplit(":", 1)[-1]] = data.test
    for ds in splits.values():
        ds.canvas_size = canvas
    return splits


def _starting_point(store: Path, splits: dict[str, FolderImages], fp: str, overwrite: bool
                    ) -> tuple[str, dict[str, int], dict[str, list[int]], dict[str, Any] | None]:
    """Where a prepare into ``store`` starts: (status, rows done per split, skipped rows per
    split, the manifest of a store that is already up to date or None). Cleans what a prepare
    of another source or a damaged store left; one-line errors for what it must not touch."""
    status, done, skipped = "prepared", {s: 0 for s in splits}, {s: [] for s in splits}
    if (store / MANIFEST).is_file():
        try:
            old = read_manifest(store)
        except DataError:
            old = None
        if old is not None and old.get("fingerprint") == fp:
            try:
                open_prepared(store)
                return status, done, skipped, old
            except DataError:
                pass  # damaged: make it again
        elif not overwrite:
            raise DataError(f"{store} already holds a prepared store of another folder or "
                            "canvas; pass --overwrite to replace it, or choose another --out")
        _clean(store, list(splits) + list((old or {}).get("splits", {})))
    elif (store / PROGRESS).is_file():
        try:
            progress = json.loads((store / PROGRESS).read_text())
        except (OSError, ValueError):
            progress = {}
        if progress.get("fingerprint") == fp and all(
                (store / s / f).is_file() for s in splits for f in _FILES):
            status, done, skipped = "resumed", progress["done"], progress["skipped_rows"]
        else:
            _clean(store, list(splits))
    elif store.exists() and (not store.is_dir() or any(store.iterdir())):
        raise DataError(f"{store} exists and is not a prepared store; choose an empty or new "
                        "--out")
    return status, done, skipped, None


def _write_chunk(ds: FolderImages, arrays: dict[str, np.ndarray], batch: tuple,
                 skipped: list[int], skip_bad_images: bool) -> np.ndarray:
    """Write one decoded chunk into a split's arrays (flushed); records its bad rows in
    ``skipped`` (or raises when bad images are not skipped). Returns the chunk's rows."""
    images, ok, index, errors, sizes = batch
    rows = index.numpy()
    for r in (~ok).nonzero().flatten().tolist():
        if not skip_bad_images:
            raise DataError(ds._bad_message(int(index[r]), errors[r]))
        skipped.append(int(index[r]))
    a, b = int(rows[0]), int(rows[-1]) + 1
    arrays["images.npy"][a:b] = images.numpy()
    arrays["sizes.npy"][a:b] = sizes.numpy()
    for arr in arrays.values():
        arr.flush()
    return rows


def _write_manifest(store: Path, folder: Path, canvas: int, fp: str, classes,
                    splits: dict[str, FolderImages], skipped: dict[str, list[int]]
                    ) -> dict[str, Any]:
    """Checksum the written files and write manifest.json (last, atomically); returns it."""
    manifest = {"format": FORMAT, "version": VERSION, "canvas": canvas, "source": str(folder),
                "fingerprint": fp, "classes": classes, "splits": {}}
    for split, ds in splits.items():
        manifest["splits"][split] = {
            "count": len(ds), "skipped_rows": sorted(skipped[split]),
            "skipped_files_at_open": ds.skipped_at_open,
            "files": {f: {"bytes": (store / split / f).stat().st_size,
                          "sha256": sha256_file(store / split / f)} for f in _FILES}}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    _write_json_atomic(store / MANIFEST, manifest)
    return manifest


def _open_arrays(store: Path, splits: dict[str, FolderImages], canvas: int, fresh: bool
                 ) -> dict[str, dict[str, np.ndarray]]:
    """The split's arrays as writable memory maps (created at full size when ``fresh``); the
    labels are written here, once."""
    out = {}
    for split, ds in splits.items():
        (store / split).mkdir(parents=True, exist_ok=True)
        n = len(ds)
        specs = {"images.npy": (np.uint8, (n, 3, canvas, canvas)),
                 "sizes.npy": (np.int32, (n, 2)), "labels.npy": (np.int64, (n,))}
        arrays = {}
        for file, (dtype, shape) in specs.items():
            path = store / split / file
            arrays[file] = (np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                            if fresh else np.load(path, mmap_mode="r+"))
        if fresh:
            arrays["labels.npy"][:] = (ds.labels.numpy() if ds.labels is not None else -1)
        out[split] = arrays
    return out


def _decoded(ds: FolderImages, chunks: list[list[int]], workers: int) -> Iterator[tuple]:
    yield from fetch_in_workers(ds, chunks, workers) if chunks else iter(())


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress_bar(console, show: bool):
    if not show:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("images"), TimeRemainingColumn(), console=console,
                    transient=False)
