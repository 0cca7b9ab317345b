"""Backbone features of un-augmented images, batched, in eval mode, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ssl_zoo.checkpoint import atomic_torch_save, safe_load
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.views import eval_view


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
def extract_features(encoder: nn.Module, dataset, *, image_size: int, mean, std,
                     device: torch.device, batch_size: int = 256,
                     num_workers: int = 0) -> torch.Tensor:
    """(N, D) float32 CPU features of every image of ``dataset`` in index order.

    Images go through the deterministic evaluation view (no augmentation); the encoder runs in
    eval mode under ``no_grad`` and its previous train/eval mode is restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    loader = BatchLoader(dataset, batch_size, shuffle=False, drop_last=False,
                         num_workers=num_workers)
    chunks = []
    try:
        for images, _, sizes in loader.iterate():
            sizes = sizes.to(device) if sizes is not None else None
            x = eval_view(images.to(device, non_blocking=True), image_size, mean, std,
                          sizes=sizes)
            chunks.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def cached_features(encoder: nn.Module, dataset, *, key: dict, cache_dir: Path | None,
                    **kwargs) -> torch.Tensor:
    """:func:`extract_features`, stored under ``cache_dir`` by a hash of ``key`` and the weights.

    The key names the dataset, split and view; the weights' fingerprint is added here, so a
    changed checkpoint never reuses stale features.
    """
    if cache_dir is None:
        return extract_features(encoder, dataset, **kwargs)
    full_key = dict(key, weights=module_fingerprint(encoder), n=len(dataset),
                    image_size=kwargs.get("image_size"))
    digest = hashlib.sha1(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()
    path = Path(cache_dir) / f"{key.get('split', 'features')}-{digest[:16]}.pt"
    if path.is_file():
        try:
            feats = safe_load(path)
            if isinstance(feats, torch.Tensor) and feats.shape[0] == len(dataset):
                return feats
        except Exception:  # a damaged cache file is recomputed
            pass
    feats = extract_features(encoder, dataset, **kwargs)
    atomic_torch_save(feats, path)
    return feats
