"""Batches of uint8 images in a seeded order, sharded across ranks, resumable mid-epoch.

Order: the epoch's permutation of all N indices depends only on ``(seed, epoch)``, so every
rank computes the same one. Sharding follows ``DistributedSampler``: rank r takes positions
r, r + W, r + 2W, ... (strided), so the ranks' shares are disjoint and equally long.

``drop_last`` acts on the global batch (``batch_size * world_size``): with it the permutation
is cut to a whole number of global batches, so every rank has ``N // (batch_size * W)`` full
batches and the remainder (< one global batch) is left out this epoch; without it the
permutation is padded by wrapping around to a multiple of W (a few images repeated, as in
``DistributedSampler``) and each rank's last batch may be short.

In-memory datasets are indexed in the main process (no DataLoader: one tensor gather per
batch). Lazy (folder) datasets go through a ``torch.utils.data.DataLoader`` whose batch sampler
is the same index order; decoding and resizing happen in its worker processes, which send
back a batch tensor, an ok-mask and the error texts; the main process then replaces or reports
bad images (``FolderImages.assemble``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.errors import DataError


class _Decode(Dataset):
    """Per-index decoding of a lazy dataset; runs in DataLoader workers and never raises."""

    def __init__(self, ds):
        self.ds = ds
        self.blank = torch.zeros((3, ds.image_size, ds.image_size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool, int, str]:
        img, why = self.ds.decode_or_none(i)
        return (img, True, i, "") if img is not None else (self.blank, False, i, why)


def _collate(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """One uint8 batch tensor per worker message (not one shared-memory tensor per image)."""
    images = torch.stack([x for x, _, _, _ in items])
    ok = torch.tensor([o for _, o, _, _ in items], dtype=torch.bool)
    index = torch.tensor([i for _, _, i, _ in items], dtype=torch.long)
    return images, ok, index, [e for _, _, _, e in items]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of all ``n`` indices in ``epoch``: a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (1 << 63))
    return torch.randperm(n, generator=g)


class BatchLoader:
    """Seeded, rank-sharded batches ``(uint8 images (b, 3, S, S), dataset index int64 (b,))``."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 pin_memory: bool = False):
        n = len(dataset)
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        if n == 0:
            raise DataError(f"{getattr(dataset, 'name', 'the dataset')} holds no images")
        if drop_last and batch_size * world_size > n:
            raise DataError(
                f"a batch of {batch_size * world_size} images (batch size {batch_size} x "
                f"{world_size} processes) is larger than the dataset ({n} images); use a batch "
                f"size of at most {n // world_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.drop_last, self.seed, self.rank, self.world = drop_last, seed, rank, world_size
        self.num_workers, self.pin_memory = max(0, num_workers), pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from now on (the same on every rank)."""
        self.epoch = epoch

    def _per_rank(self) -> int:
        n, w = len(self.dataset), self.world
        if self.drop_last:
            return n // (self.batch_size * w) * self.batch_size
        return -(-n // w)

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on every rank)."""
        return -(-self._per_rank() // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch, in order."""
        n = len(self.dataset)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        total = self._per_rank() * self.world
        if total > n:  # pad by wrapping around (repeated as often as needed when n < W)
            order = order.repeat(-(-total // n))
        return order[:total][self.rank::self.world]

    def batch_indices(self, start_batch: int = 0) -> list[torch.Tensor]:
        """The index tensors of this rank's batches from ``start_batch`` on."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        idx = self.indices()[start_batch * self.batch_size:]
        return list(idx.split(self.batch_size)) if len(idx) else []

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from ``start_batch`` on; earlier ones are skipped, not loaded."""
        batches = self.batch_indices(start_batch)
        if not batches:
            return
        if not getattr(self.dataset, "lazy", False):
            for b in batches:
                images = self.dataset.load(b)
                yield (images.pin_memory() if self.pin_memory else images), b
            return
        loader = DataLoader(_Decode(self.dataset), batch_sampler=[b.tolist() for b in batches],
                            num_workers=min(self.num_workers, len(batches)),
                            collate_fn=_collate, pin_memory=self.pin_memory)
        for images, ok, index, errors in loader:
            yield self.dataset.assemble(images, ok, index, errors)
