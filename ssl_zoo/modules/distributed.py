"""Cross-rank helpers that are no-ops in a single process (no process group needed)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ssl_zoo.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def sync_bn_process_group(group_size: int):
    """This rank's process group for SyncBatchNorm over groups of ``group_size`` consecutive
    ranks (every rank creates every group, as ``dist.new_group`` requires); None: all ranks
    (``group_size`` 0, or at least the world size, or no process group)."""
    world = get_world_size()
    if group_size <= 0 or group_size >= world:
        return None
    if world % group_size:
        raise ConfigError(f"train.sync_bn_group_size {group_size} does not divide the "
                         f"{world} processes")
    mine = None
    for first in range(0, world, group_size):
        group = dist.new_group(list(range(first, first + group_size)))
        if first <= get_rank() < first + group_size:
            mine = group
    return mine


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (identity in one process); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over all ranks in place; returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


@torch.no_grad()
def gather_nograd(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) from all ranks along dim 0, rank order."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank's loss into the local slice."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), t.shape[0]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from all ranks (rank order); gradients flow back to the local part.

    With DDP averaging parameter gradients, a per-rank mean loss over the gathered tensor then
    gives exactly the gradient of one process on the global batch.
    """
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s ``t``, in place (identity in one
    process); returns ``t``."""
    if is_distributed():
        dist.broadcast(t, src)
    return t
