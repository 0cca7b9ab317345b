"""Batches of uint8 images in a seeded order, sharded across ranks, resumable mid-epoch.

Order: the epoch's permutation of all N indices depends only on ``(seed, epoch)``, so every
rank computes the same one. Sharding follows ``DistributedSampler``: rank r takes positions
r, r + W, r + 2W, ... (strided), so the ranks' shares are disjoint and equally long.

``drop_last`` acts on the global batch (``batch_size * world_size``): with it the permutation
is cut to a whole number of global batches, so every rank has ``N // (batch_size * W)`` full
batches and the remainder (< one global batch) is left out this epoch; without it the
permutation is padded by wrapping around to a multiple of W (a few images repeated, as in
``DistributedSampler``) and each rank's last batch may be short.

Every batch is ``(images, index, sizes)``: ``sizes`` is None for datasets whose images are
their own originals, else the int64 (b, 2) original (height, width) of each canvas (folders,
prepared stores), which travels to the device with the batch and into the views.

In-memory datasets are indexed in the main process (no DataLoader: one tensor gather per
batch). Lazy (folder, prepared) datasets go through one ``torch.utils.data.DataLoader`` per
``BatchLoader`` whose workers persist across epochs (no restart per epoch) and fetch whole
batches (``dataset.fetch``), ``LOADER_PREFETCH`` batches ahead per worker; its batch sampler is
the current epoch's index order. The workers send back a batch tensor, an ok-mask, the error
texts and the sizes; the main process then replaces or reports bad images
(``FolderImages.assemble``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.errors import DataError

LOADER_PREFETCH = 4
"""Batches each loader worker prepares ahead (DataLoader ``prefetch_factor``)."""


class _Batches(Dataset):
    """Whole batches of a lazy dataset (``__getitems__``: one worker call and one message per
    batch, not per image); runs in DataLoader workers and never raises on a bad file."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds.fetch([i])

    def __getitems__(self, indices: list[int]):
        return self.ds.fetch(indices)


def _as_is(batch):
    return batch


class _CurrentBatches:
    """A batch sampler whose batches the ``BatchLoader`` sets before each pass (so the same
    DataLoader, and its persistent workers, serve every epoch)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of all ``n`` indices in ``epoch``: a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (1 << 63))
    return torch.randperm(n, generator=g)


class BatchLoader:
    """Seeded, rank-sharded batches ``(uint8 images (b, 3, S, S), dataset index int64 (b,),
    original sizes int64 (b, 2) or None)``."""

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
        self._sampler: _CurrentBatches | None = None
        self._workers: DataLoader | None = None

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

    def iterate(self, start_batch: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The epoch's batches from ``start_batch`` on; earlier ones are skipped, not loaded."""
        batches = self.batch_indices(start_batch)
        if not batches:
            return
        if not getattr(self.dataset, "lazy", False):
            for b in batches:
                images, index, sizes = self.dataset.load_batch(b)
                if self.pin_memory:
                    images = images.pin_memory()
                    sizes = sizes.pin_memory() if sizes is not None else None
                yield images, index, sizes
            return
        if self.num_workers == 0:
            for b in batches:
                yield self.dataset.assemble(*self.dataset.fetch(b.tolist()))
            return
        if self._workers is None:
            self._sampler = _CurrentBatches()
            self._workers = DataLoader(
                _Batches(self.dataset), batch_sampler=self._sampler,
                num_workers=self.num_workers, collate_fn=_as_is, pin_memory=self.pin_memory,
                persistent_workers=True, prefetch_factor=LOADER_PREFETCH)
        self._sampler.batches = [b.tolist() for b in batches]
        for images, ok, index, errors, sizes in self._workers:
            yield self.dataset.assemble(images, ok, index, errors, sizes)


def fetch_in_workers(dataset, batches: list[list[int]], num_workers: int = 0
                     ) -> Iterator[tuple]:
    """A lazy dataset's raw ``fetch`` results for ``batches``, in order, decoded in
    ``num_workers`` worker processes (0: here), bad rows left as they are (``ok`` False)."""
    if num_workers == 0:
        for b in batches:
            yield dataset.fetch(b)
        return
    yield from DataLoader(_Batches(dataset), batch_sampler=batches,
                          num_workers=min(num_workers, len(batches)) or 1, collate_fn=_as_is,
                          prefetch_factor=LOADER_PREFETCH)
