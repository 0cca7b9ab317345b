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

Views in the workers (``views=WorkerViews(...)``, for runs whose device is the CPU): then each
batch comes out as ``(Views, index, sizes)``, its crops made by ``make_views`` where the batch
was loaded (in a worker, one thread each, as torchvision's per-image transforms run; in this
process for in-memory data or without workers). Batch b of epoch e is training step
``first_step + b - start_batch`` and its crops are drawn with a generator seeded by
:func:`step_seed` of that step, so they are exactly the crops the trainer's step would make
from the same batch after seeding torch's generator with the same seed, wherever they are made.
Bad rows of a folder are replaced in the worker before the crops are cut
(``FolderImages.substitute``), and reported or raised here (``FolderImages.account``).

Decoding on the training device (``decode_on=device``, folders only): the workers read each
JPEG's bytes (``FolderImages.fetch_encoded``) and this process decodes the batch there in one
``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA; ``FolderImages.assemble_encoded``); the
batch comes out as canvases and sizes already on that device.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.data.views import ViewSpec, make_views
from ssl_zoo.errors import DataError

LOADER_PREFETCH = 4
"""Batches each loader worker prepares ahead (DataLoader ``prefetch_factor``)."""


def _kill_leftover_workers() -> None:
    """At interpreter exit, SIGKILL the daemonic children still alive (loader workers of a
    loader nobody closed): they ignore SIGTERM (below), so multiprocessing's own exit handler,
    which terminates daemonic children with SIGTERM and then joins them, would wait forever.
    Registered after multiprocessing's handler, so it runs before it."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_leftover_workers)


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGTERM / SIGINT / SIGUSR1 to the training process (a cluster or a
    terminal signals the whole process group): it stops cleanly after its step, and its
    workers with it."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


LOADER_PREFETCH_VIEWS = 2
"""Batches ahead per worker when the workers make the views (a batch of 2x224 + 6x96 float
crops is 1.7x the bytes of its uint8 599-px canvases, 9.5x those of 256-px ones)."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one iteration of one rank."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


@dataclass(frozen=True)
class WorkerViews:
    """Make each batch's crops in the loader (its workers): the view spec, and the run's seed
    and rank that seed each step's crops (:func:`step_seed`)."""

    spec: ViewSpec
    seed: int
    rank: int = 0

    def make(self, images: torch.Tensor, sizes: torch.Tensor | None, step: int):
        """The crops of training step ``step``'s batch."""
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank))
        return make_views(images, self.spec, gen, sizes)


@dataclass(frozen=True)
class _Encoded:
    """A batch the workers read as bytes, for decoding on the training device."""

    indices: list[int]


@dataclass(frozen=True)
class _Job:
    """What the batch sampler hands a worker when it makes the views: the batch's dataset
    indices and its training step."""

    indices: list[int]
    step: int


class _Batches(Dataset):
    """Whole batches of a lazy dataset (``__getitems__``: one worker call and one message per
    batch, not per image); runs in DataLoader workers and never raises on a bad file. With
    ``views``, a batch comes with its crops (bad rows replaced first, reported to the main
    process)."""

    def __init__(self, ds, views: WorkerViews | None = None):
        self.ds, self.views = ds, views

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds.fetch([i])

    def __getitems__(self, job):
        if isinstance(job, _Encoded):
            return self.ds.fetch_encoded(job.indices)
        if isinstance(job, _Job):
            images, index, sizes, report = self.ds.substitute(*self.ds.fetch(job.indices))
            return self.views.make(images, sizes, job.step), index, sizes, report
        return self.ds.fetch(job)


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
                 pin_memory: bool = False, views: WorkerViews | None = None,
                 decode_on: torch.device | None = None):
        n = len(dataset)
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        if n == 0:
            raise DataError(f"{getattr(dataset, 'name', 'the dataset')} holds no images")
        if decode_on is not None and (views is not None
                                      or not hasattr(dataset, "fetch_encoded")):
            raise DataError("decoding on the device needs an image folder (folder:PATH) and "
                            "the views made in the step")
        if drop_last and batch_size * world_size > n:
            raise DataError(
                f"a batch of {batch_size * world_size} images (batch size {batch_size} x "
                f"{world_size} processes) is larger than the dataset ({n} images); use a batch "
                f"size of at most {n // world_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.drop_last, self.seed, self.rank, self.world = drop_last, seed, rank, world_size
        self.num_workers, self.pin_memory = max(0, num_workers), pin_memory
        self.views, self.decode_on = views, decode_on
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

    def iterate(self, start_batch: int = 0, first_step: int | None = None) -> Iterator[tuple]:
        """The epoch's batches from ``start_batch`` on; earlier ones are skipped, not loaded.

        Each is ``(images, index, sizes)``, or with ``views`` ``(Views, index, sizes)``, the
        batch at ``start_batch`` being training step ``first_step`` (default: the epoch's
        first step ``epoch * len(self)`` plus ``start_batch``)."""
        batches = self.batch_indices(start_batch)
        if not batches:
            return
        if self.views is not None:
            if first_step is None:
                first_step = self.epoch * len(self) + start_batch
            yield from self._iterate_views(batches, first_step)
            return
        if not getattr(self.dataset, "lazy", False):
            for b in batches:
                images, index, sizes = self.dataset.load_batch(b)
                if self.pin_memory:
                    images = images.pin_memory()
                    sizes = sizes.pin_memory() if sizes is not None else None
                yield images, index, sizes
            return
        if self.decode_on is not None:
            yield from self._iterate_encoded(batches)
            return
        if self.num_workers == 0:
            for b in batches:
                yield self.dataset.assemble(*self.dataset.fetch(b.tolist()))
            return
        self._start_workers(_Batches(self.dataset), LOADER_PREFETCH, self.pin_memory)
        self._sampler.batches = [b.tolist() for b in batches]
        for images, ok, index, errors, sizes in self._workers:
            yield self.dataset.assemble(images, ok, index, errors, sizes)

    def _start_workers(self, batches: _Batches, prefetch: int, pin_memory: bool) -> None:
        """The persistent DataLoader (made on the first pass, kept for later ones)."""
        if self._workers is None:
            self._sampler = _CurrentBatches()
            self._workers = DataLoader(
                batches, batch_sampler=self._sampler, num_workers=self.num_workers,
                collate_fn=_as_is, pin_memory=pin_memory, persistent_workers=True,
                prefetch_factor=prefetch, worker_init_fn=_ignore_stop_signals)

    def _iterate_encoded(self, batches: list[torch.Tensor]) -> Iterator[tuple]:
        """Batches read as bytes (in the workers, or here) and decoded on ``decode_on``."""
        ds, device = self.dataset, self.decode_on
        if self.num_workers == 0:
            for b in batches:
                yield ds.assemble_encoded(*ds.fetch_encoded(b.tolist()), device)
            return
        self._start_workers(_Batches(ds), LOADER_PREFETCH, pin_memory=False)
        self._sampler.batches = [_Encoded(b.tolist()) for b in batches]
        for payloads, ok, index, errors in self._workers:
            yield ds.assemble_encoded(payloads, ok, index, errors, device)

    def _iterate_views(self, batches: list[torch.Tensor], first_step: int) -> Iterator[tuple]:
        """``(Views, index, sizes)`` per batch, the crops made in the workers (lazy datasets
        with workers) or here."""
        if not getattr(self.dataset, "lazy", False) or self.num_workers == 0:
            for step, b in enumerate(batches, start=first_step):
                images, index, sizes = self.dataset.load_batch(b)
                yield self.views.make(images, sizes, step), index, sizes
            return
        # crops are not pinned: CPU runs
        self._start_workers(_Batches(self.dataset, self.views), LOADER_PREFETCH_VIEWS, False)
        self._sampler.batches = [_Job(b.tolist(), step)
                                 for step, b in enumerate(batches, start=first_step)]
        finished = False
        try:
            for views, index, sizes, report in self._workers:
                self.dataset.account(report)
                yield views, index, sizes
            finished = True
        finally:
            if not finished:  # an error or an early stop: batches of crops still in flight
                self.close()

    def close(self) -> None:
        """Stop the worker processes now (they start again on the next pass). A loader left
        to the garbage collector stops them in ``DataLoader.__del__``, which was seen to wait
        5 s per worker in a process that had started other loaders since; the trainer closes
        its loaders when it is done with them."""
        workers, self._workers = self._workers, None
        iterator = getattr(workers, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


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
