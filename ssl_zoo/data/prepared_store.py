"""A prepared store on disk (layout: ``ssl_zoo.data.prepared``): its manifest and files
checked, and its splits read as datasets from the memory maps. ``prepared.py`` writes stores
and registers the ``prepared:`` source; this module only reads them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_zoo.data.sources import DEFAULT_FOLDER_SIZE, DataSplits, ImageDataset
from ssl_zoo.errors import DataError

FORMAT = "ssl-zoo-prepared"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
VERIFY_IMAGES_BYTES = 256 * 2**20
"""Stores whose images take at most this many bytes have them checksummed at every open."""
STORE_FILES = ("images.npy", "sizes.npy", "labels.npy")


class PreparedImages(ImageDataset):
    """One split of a prepared store: canvases read from the memory map (in loader workers),
    with their original sizes; ``image_size`` is the size the model sees."""

    lazy = True

    def __init__(self, name: str, folder: Path, rows: np.ndarray, labels: np.ndarray | None,
                 classes: list[str] | None, image_size: int, canvas: int, skipped: int = 0):
        self.name, self.folder, self.rows, self.classes = name, folder, rows, classes
        self.image_size, self.canvas_size, self.skipped = image_size, canvas, skipped
        self.labels = torch.from_numpy(labels[rows]) if labels is not None else None
        self._maps: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}  # each process maps the files itself

    def _map(self, file: str) -> np.ndarray:
        if self._maps is None:
            self._maps = {f: np.load(self.folder / f, mmap_mode="r") for f in STORE_FILES[:2]}
        return self._maps[file]

    def __len__(self) -> int:
        return len(self.rows)

    def use_canvas(self, side: int) -> str | None:
        """The store keeps its canvas; a one-line note when the run's crops ask for more."""
        if side <= self.canvas_size:
            return None
        return (f"{self.name.rsplit(':', 1)[0]}: its canvas is {self.canvas_size} px, the crops "
                f"ask for {side} px, so small crops are upsampled from fewer pixels than the "
                f"originals hold; prepare it again with --canvas {side} (or set "
                f"canvas={self.canvas_size} to accept it)")

    def fetch(self, indices: list[int]):
        """A batch read from the store (in a worker): canvases, ok-mask, index, error texts,
        original sizes."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        images = torch.from_numpy(np.ascontiguousarray(self._map("images.npy")[rows]))
        sizes = torch.from_numpy(self._map("sizes.npy")[rows].astype(np.int64))
        n = len(indices)
        return (images, torch.ones(n, dtype=torch.bool), torch.tensor(indices, dtype=torch.long),
                [""] * n, sizes)

    def assemble(self, images, ok, index, errors, sizes):
        """Nothing to replace: bad files were left out when the store was prepared."""
        return images, index, sizes

    def substitute(self, images, ok, index, errors, sizes):
        """As :meth:`assemble`, with an empty report (the loader's views-in-workers path)."""
        return images, index, sizes, ({}, "")

    def account(self, report) -> None:
        """Nothing to report (see :meth:`substitute`)."""

    def load_batch(self, index: torch.Tensor):
        return self.assemble(*self.fetch([int(i) for i in index]))

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return self.load_batch(index)[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 * 2**20):
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(store: Path) -> dict[str, Any]:
    """The store's manifest, checked (format, version, own checksum), or a one-line DataError."""
    path = store / MANIFEST
    if not store.is_dir():
        raise DataError(f"prepared store not found: {store}")
    if not path.is_file():
        hint = (" (its prepare did not finish: run ssl-zoo prepare again to resume it)"
                if (store / PROGRESS).is_file() else "")
        raise DataError(f"{store}: no {MANIFEST}, so not a complete prepared store{hint}; "
                        "make one with: ssl-zoo prepare folder:PATH --out DIR")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an ssl-zoo prepared store manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: store version {manifest.get('version')}, this ssl-zoo reads "
                        f"version {VERSION}; prepare it again")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise DataError(f"{path}: manifest checksum mismatch (edited or damaged); prepare the "
                        "store again")
    return manifest


def _check_split(store: Path, split: str, info: dict[str, Any], canvas: int
                 ) -> dict[str, np.ndarray]:
    """Sizes, shapes and checksums of one split's files; the small arrays loaded."""
    folder = store / split
    arrays = {}
    shapes = {"images.npy": (info["count"], 3, canvas, canvas), "sizes.npy": (info["count"], 2),
              "labels.npy": (info["count"],)}
    for file in STORE_FILES:
        path, want = folder / file, info["files"][file]
        if not path.is_file():
            raise DataError(f"{path}: missing from the prepared store; prepare it again")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise DataError(f"{path}: {size} bytes, the manifest says {want['bytes']} "
                            "(truncated or damaged); prepare the store again")
        if file != "images.npy" or size <= VERIFY_IMAGES_BYTES:
            if sha256_file(path) != want["sha256"]:
                raise DataError(f"{path}: checksum mismatch (damaged); prepare the store again")
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:
            raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
        if arr.shape != shapes[file]:
            raise DataError(f"{path}: shape {arr.shape}, expected {shapes[file]}")
        arrays[file] = arr
    return arrays


def open_prepared(store: str | Path, image_size: int | None = None) -> DataSplits:
    """The splits of a prepared store, checked (``read_manifest``, ``_check_split``)."""
    store = Path(store).expanduser()
    manifest = read_manifest(store)
    canvas, classes = int(manifest["canvas"]), manifest.get("classes")
    image_size = image_size or DEFAULT_FOLDER_SIZE
    out: dict[str, PreparedImages] = {}
    for split, info in manifest["splits"].items():
        arrays = _check_split(store, split, info, canvas)
        rows = np.setdiff1d(np.arange(info["count"]), np.asarray(info["skipped_rows"], np.int64))
        if len(rows) == 0:
            raise DataError(f"{store}/{split}: holds no images")
        labels = np.asarray(arrays["labels.npy"]) if classes else None
        out[split] = PreparedImages(f"prepared:{store}:{split}", store / split, rows, labels,
                                    classes, image_size, canvas,
                                    len(info["skipped_rows"]) + info["skipped_files_at_open"])
    train = out["train"]
    test = next((out[s] for s in out if s != "train"), None)
    return DataSplits(train, train if train.labels is not None else None, test)
