"""Backbone features of un-augmented images, batched, in eval mode, cached on disk.

Features are written batch by batch into one preallocated matrix (no list of chunks joined at
the end, which would hold them twice). Cached features larger than ``MEMMAP_ABOVE_BYTES`` go
into a ``.npy`` file instead of memory and come back memory-mapped (a read-only
``numpy.memmap``), which the feature probe streams and RankMe reads by chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ssl_zoo.checkpoint import atomic_torch_save, safe_load
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.views import eval_view

MEMMAP_ABOVE_BYTES = 2 << 30
"""Cached float32 features above this size are memory-mapped from disk, not held in memory."""


def cache_root() -> Path:
    """Where shared caches live (``$SSL_ZOO_CACHE`` or ``~/.cache/ssl-zoo``)."""
    return Path(os.environ.get("SSL_ZOO_CACHE", Path.home() / ".cache" / "ssl-zoo"))


def module_fingerprint(module: nn.Module) -> str:
    """A hash of every tensor of ``module``'s state_dict: it changes whenever the weights do."""
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@torch.no_grad()
def _extract_into(encoder: nn.Module, dataset, allocate, *, image_size: int, mean, std,
                  device: torch.device, batch_size: int = 256, num_workers: int = 0,
                  console=None, description: str = "features"):
    """Features of every image of ``dataset`` in index order, written into ``allocate(N, D)``
    (a tensor or an array); None for an empty dataset. ``console``: a progress bar."""
    was_training = encoder.training
    encoder.eval()
    loader = BatchLoader(dataset, batch_size, shuffle=False, drop_last=False,
                         num_workers=num_workers)
    out, row = None, 0
    bar = (Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("images"), TimeRemainingColumn(), console=console, transient=True)
           if console is not None else None)
    task = bar.add_task(description, total=len(dataset)) if bar is not None else None
    try:
        with bar or contextlib.nullcontext():
            for images, _, sizes in loader.iterate():
                sizes = sizes.to(device) if sizes is not None else None
                x = eval_view(images.to(device, non_blocking=True), image_size, mean, std,
                              sizes=sizes)
                f = encoder(x).float().cpu()
                if out is None:
                    out = allocate(len(dataset), f.shape[1])
                out[row:row + len(f)] = f if isinstance(out, torch.Tensor) else f.numpy()
                row += len(f)
                if bar is not None:
                    bar.advance(task, len(f))
    finally:
        encoder.train(was_training)
    return out


def extract_features(encoder: nn.Module, dataset, *, image_size: int, mean, std,
                     device: torch.device, batch_size: int = 256,
                     num_workers: int = 0, console=None,
                     description: str = "features") -> torch.Tensor:
    """(N, D) float32 CPU features of every image of ``dataset`` in index order.

    Images go through the deterministic evaluation view (no augmentation); the encoder runs in
    eval mode under ``no_grad`` and its previous train/eval mode is restored afterwards.
    """
    out = _extract_into(encoder, dataset, lambda n, d: torch.empty(n, d), image_size=image_size,
                        mean=mean, std=std, device=device, batch_size=batch_size,
                        num_workers=num_workers, console=console, description=description)
    return out if out is not None else torch.empty(0, 0)


def cached_features(encoder: nn.Module, dataset, *, key: dict, cache_dir: Path | None,
                    **kwargs) -> torch.Tensor | np.ndarray:
    """:func:`extract_features`, stored under ``cache_dir`` by a hash of ``key`` and the weights
    (a read-only memmap of a ``.npy`` file above ``MEMMAP_ABOVE_BYTES``, module doc).

    The key names the dataset, split and view; the weights' fingerprint is added here, so a
    changed checkpoint never reuses stale features.
    """
    if cache_dir is None:
        return extract_features(encoder, dataset, **kwargs)
    full_key = dict(key, weights=module_fingerprint(encoder), n=len(dataset),
                    image_size=kwargs.get("image_size"))
    digest = hashlib.sha1(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()
    stem = Path(cache_dir) / f"{key.get('split', 'features')}-{digest[:16]}"
    path, big = stem.with_suffix(".pt"), stem.with_suffix(".npy")
    try:
        if big.is_file():
            feats = np.load(big, mmap_mode="r")
            if feats.ndim == 2 and feats.shape[0] == len(dataset):
                return feats
        elif path.is_file():
            feats = safe_load(path)
            if isinstance(feats, torch.Tensor) and feats.shape[0] == len(dataset):
                return feats
    except Exception:  # a damaged cache file is recomputed
        pass
    partial = big.with_name(big.name + ".partial.npy")

    def allocate(n: int, d: int):
        if n * d * 4 <= MEMMAP_ABOVE_BYTES:
            return torch.empty(n, d)
        partial.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, d))

    feats = _extract_into(encoder, dataset, allocate, **kwargs)
    if feats is None:
        return torch.empty(0, 0)
    if isinstance(feats, np.memmap):
        feats.flush()
        del feats
        os.replace(partial, big)  # whole or absent: an interrupted extraction is redone
        return np.load(big, mmap_mode="r")
    atomic_torch_save(feats, path)
    return feats
