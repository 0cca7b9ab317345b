"""A persistent first-in-first-out queue of embeddings (the MoCo dictionary, He et al. 2020).

The queue is a ring buffer of fixed shape registered as a persistent buffer, and its write
position and fill count are host counters saved beside it (:mod:`ssl_zoo.modules.state`), so a
checkpoint holds its contents, where it writes next and how much of it has been written: a
resumed run sees exactly the negatives an uninterrupted run would. (lightly's memory bank keeps
its bank with ``persistent=False``, so resuming silently starts from random vectors again.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.modules.distributed import gather_nograd
from ssl_zoo.modules.state import host_counters


class FeatureQueue(nn.Module):
    """Ring buffer of the ``length`` most recently enqueued ``dim``-d embeddings.

    Starts filled with random unit vectors (as the MoCo reference does), so it can be used as a
    set of negatives from the first step. ``filled`` counts the slots the write position has
    passed (host int; :meth:`valid`); ``written`` (a bool buffer, one per slot) says which slots
    hold a real embedding: False for the initial random vectors, including slots a skipped
    step passed over. Callers that must see only real embeddings (SwAV's Sinkhorn) mask with it.
    """

    features: torch.Tensor
    written: torch.Tensor  # (length,) bool: the slot holds an enqueued embedding
    ptr: int  # next slot to write
    filled: int  # slots the write position has passed (at most length)

    def __init__(self, length: int, dim: int, *, seed: int | None = 0):
        super().__init__()
        if length < 1 or dim < 1:
            raise ValueError(f"queue length and dim must be >= 1, got {length} and {dim}")
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        init = F.normalize(torch.randn(length, dim, generator=g), dim=1)
        self.register_buffer("features", init)
        self.register_buffer("written", torch.zeros(length, dtype=torch.bool))
        # they depend only on how many keys were enqueued: known on the host, never read back
        host_counters(self, ptr=0, filled=0)
        # after host_counters' hook, so the counters are loaded when this one runs
        self.register_load_state_dict_pre_hook(_written_of_older_checkpoints)

    @property
    def length(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def filled_count(self) -> int:
        """Slots written by :meth:`enqueue` so far (at most ``length``), known on the host."""
        return self.filled

    @property
    def is_full(self) -> bool:
        return self.filled >= self.length

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, *, gather: bool = True,
                valid: torch.Tensor | None = None) -> None:
        """Overwrite the oldest entries with ``keys`` (N, dim), wrapping around the end.

        With ``gather`` the keys of every rank are concatenated first (rank order), so all ranks
        hold the same queue. When more keys than slots arrive, only the newest ``length`` stay.
        ``valid`` (a 0-d bool tensor on the device): where it is False (a training step skipped
        for a non-finite loss) the slots keep their old contents and their ``written`` flags;
        the write position still advances, so the counters never depend on a device value.
        """
        if gather:
            keys = gather_nograd(keys)
        keys = keys.detach()
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"expected keys of shape (N, {self.dim}), got {tuple(keys.shape)}")
        n, length = keys.shape[0], self.length
        if n == 0:
            return
        ptr = self.ptr
        if n >= length:  # only the newest `length` keys survive; they end where the write ends
            ptr = (ptr + n - length) % length
            keys, n = keys[n - length:], length
        slots = (torch.arange(n, device=self.features.device) + ptr) % length
        keys = keys.to(self.features.dtype)
        if valid is None:
            self.written.index_fill_(0, slots, True)
        else:
            keys = torch.where(valid, keys, self.features.index_select(0, slots))
            self.written.index_copy_(0, slots, self.written.index_select(0, slots) | valid)
        self.features.index_copy_(0, slots, keys)
        self.ptr = (ptr + n) % length
        self.filled = min(self.filled + n, length)

    def valid(self) -> torch.Tensor:
        """The entries written by :meth:`enqueue` so far, oldest first (all once full)."""
        filled, ptr = self.filled, self.ptr
        slots = (torch.arange(filled, device=self.features.device) + ptr - filled) % self.length
        return self.features[slots]

    def written_slots_by_count(self) -> torch.Tensor:
        """(length,) bool: the slots the counters say were written (the ``filled`` before
        ``ptr``), what ``written`` is when no step was skipped."""
        slots = (torch.arange(self.filled) + self.ptr - self.filled) % self.length
        out = torch.zeros(self.length, dtype=torch.bool)
        out[slots] = True
        return out.to(self.written.device)

    def forward(self) -> torch.Tensor:
        """A detached copy of the whole queue (length, dim): the negatives of a contrastive loss.

        A copy, because a loss's backward still needs these values after :meth:`enqueue` has
        overwritten the buffer in place.
        """
        return self.features.detach().clone()

    def extra_repr(self) -> str:
        return f"length={self.length}, dim={self.dim}"


def _written_of_older_checkpoints(module: FeatureQueue, state_dict, prefix, *_args) -> None:
    """A checkpoint from before ``written`` existed: its slots are the ones its counters say
    were written (a step skipped during its fill then counts as written, as it did)."""
    if prefix + "features" in state_dict and prefix + "written" not in state_dict:
        state_dict[prefix + "written"] = module.written_slots_by_count()
