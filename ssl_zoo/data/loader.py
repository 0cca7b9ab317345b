"""Batches of uint8 images in a seeded order, sharded across ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.errors import DataError


class _Decode(Dataset):
    """Per-index decoding of a lazy dataset, run in DataLoader workers."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds.decode(i), i


def _collate(items):
    images = torch.stack([x for x, _ in items])
    return images, torch.tensor([i for _, i in items], dtype=torch.long)


class BatchLoader:
    """Seeded, rank-sharded batches: ``(uint8 images (b, 3, S, S), dataset index (b,))``.

    The epoch's permutation depends only on ``(seed, epoch)``, the same on every rank; rank r
    takes positions r, r + W, r + 2W, ... of it (like ``DistributedSampler``). With ``drop_last``
    each rank gets ``N // (batch_size * W)`` full batches; without it, the last positions are
    padded by wrapping around so every rank has the same number of batches.
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 pin_memory: bool = False):
        n = len(dataset)
        if batch_size < 1:
            raise DataError("batch size must be >= 1")
        if drop_last and batch_size * world_size > n:
            raise DataError(
                f"batch of {batch_size * world_size} images (batch size {batch_size} x "
                f"{world_size} processes) is larger than the dataset ({n} images); use a batch "
                f"size of at most {n // world_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.drop_last, self.seed, self.rank, self.world = drop_last, seed, rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, b, w = len(self.dataset), self.batch_size, self.world
        if self.drop_last:
            return n // (b * w)
        per_rank = -(-n // w)
        return -(-per_rank // b)

    def indices(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch, in order."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[: len(self) * self.batch_size * self.world]
        else:
            total = -(-n // self.world) * self.world
            if total > n:
                order = torch.cat([order, order[: total - n]])
        return order[self.rank::self.world]

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from ``start_batch`` on (earlier ones are skipped, not loaded)."""
        idx = self.indices()[start_batch * self.batch_size:]
        batches = list(idx.split(self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if not getattr(self.dataset, "lazy", False):
            for b in batches:
                images = self.dataset.load(b)
                yield (images.pin_memory() if self.pin_memory else images), b
            return
        loader = DataLoader(_Decode(self.dataset), batch_sampler=[b.tolist() for b in batches],
                            num_workers=self.num_workers, collate_fn=_collate,
                            pin_memory=self.pin_memory,
                            persistent_workers=False)
        yield from loader
