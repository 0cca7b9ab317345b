"""Per-sample memory of the whole training set, for methods that cluster the dataset between
epochs (PCL, DeepCluster-v2, SeLa-v2; docs/design.md, "The plug-in contract").

Two ways to have an embedding of every training image at an epoch start:

- :func:`dataset_embeddings`: one pass over ``TrainContext.eval_batches()`` (deterministic
  evaluation views), each rank embedding its shard, summed over ranks (PCL does this at every
  epoch start; DeepCluster-v2 and SeLa-v2 once, before their first epoch).
- :class:`SampleMemory`: embeddings kept from the training steps themselves, one row per image,
  indexed by the dataset index (DeepCluster-v2's memory bank of the previous epoch's crops, its
  official ``main_deepclusterv2.py``). Every rank writes the rows of all ranks (the step's
  indices and embeddings are gathered), so every rank holds the same whole memory, and a
  checkpoint by rank 0 resumes it exactly, with any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ssl_zoo.errors import ConfigError
from ssl_zoo.modules.distributed import all_reduce_sum, gather_nograd
from ssl_zoo.modules.state import host_counters, sized_by_checkpoint


@torch.no_grad()
def dataset_embeddings(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       embed: Callable[[torch.Tensor], torch.Tensor], size: int, dim: int,
                       device: torch.device, who: str = "this method") -> torch.Tensor:
    """(size, dim) float32 embeddings of every training image, in dataset order, from this
    rank's ``(images, index)`` batches: sums over ranks of the embeddings and of how often each
    index was seen (padding may repeat images) give every rank the whole dataset; an image seen
    twice gets the mean of its embeddings. Raises when an image was seen by no rank."""
    feats = torch.zeros(size, dim, device=device)
    seen = torch.zeros(size, device=device)
    for images, index in batches:
        index = index.to(device)
        feats.index_add_(0, index, embed(images.to(device)).float())
        seen.index_add_(0, index, torch.ones(len(index), device=device))
    all_reduce_sum(feats)
    all_reduce_sum(seen)
    if (seen == 0).any():  # once per epoch, outside the step
        missing = int((seen == 0).sum())
        raise RuntimeError(f"{who}: {missing} of {size} training images were not embedded; "
                           "eval_batches() must cover the whole training set")
    return feats / seen[:, None]


class SampleMemory(nn.Module):
    """``banks`` embeddings of size ``dim`` for every training image: ``embeddings[j, i]`` is
    the last embedding bank ``j`` took in for image ``i`` (DeepCluster-v2: one bank per crop used
    for the assignments).

    The number of images is not known when the method is built: the buffer starts with 0 rows,
    :meth:`allocate` sizes it (``on_train_start``, from ``TrainContext.dataset_size``), and
    ``load_state_dict`` takes the checkpoint's size. ``filled`` (a host counter) says whether
    every row holds an embedding yet (after :meth:`fill`).
    """

    embeddings: torch.Tensor
    filled: int

    def __init__(self, banks: int, dim: int):
        super().__init__()
        if banks < 1 or dim < 1:
            raise ValueError(f"banks and dim must be >= 1, got {banks}, {dim}")
        self.register_buffer("embeddings", torch.zeros(banks, 0, dim))
        sized_by_checkpoint(self, "embeddings")
        host_counters(self, filled=0)

    @property
    def size(self) -> int:
        return self.embeddings.shape[1]

    def allocate(self, size: int) -> None:
        """Rows for ``size`` images (zeros), unless it has them; a filled memory of another
        size (a checkpoint of another dataset) is an error."""
        if self.size == size:
            return
        if self.filled:
            raise ConfigError(f"the checkpoint's memory holds {self.size} images but the "
                              f"training set has {size}; resume with the same dataset")
        banks, _, dim = self.embeddings.shape
        self.embeddings = torch.zeros(banks, size, dim, device=self.embeddings.device)

    @torch.no_grad()
    def fill(self, features: torch.Tensor) -> None:
        """Every bank takes ``features`` (size, dim), e.g. from :func:`dataset_embeddings`."""
        self.embeddings.copy_(features.to(self.embeddings).expand_as(self.embeddings))
        self.filled = 1

    @torch.no_grad()
    def write(self, index: torch.Tensor, rows: list[torch.Tensor],
              valid: torch.Tensor | None = None) -> None:
        """Bank ``j`` takes ``rows[j]`` (B, dim) for the images ``index`` (B,), from every rank
        (gathered, so all ranks keep the same memory). ``valid``: a 0-d bool device tensor
        (``TrainContext.step_ok``); when False the rows keep what they held. No host sync."""
        if len(rows) != self.embeddings.shape[0]:
            raise ValueError(f"{len(rows)} row sets for {self.embeddings.shape[0]} banks")
        index = gather_nograd(index.to(self.embeddings.device))
        new = gather_nograd(torch.stack(rows, dim=1).to(self.embeddings))  # (W B, banks, dim)
        new = new.transpose(0, 1)  # (banks, W B, dim)
        if valid is not None:
            new = torch.where(valid, new, self.embeddings.index_select(1, index))
        self.embeddings.index_copy_(1, index, new)
