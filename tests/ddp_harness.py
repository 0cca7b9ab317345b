"""Two gloo processes on one CPU against one process on the same global batch.

Batch norm is replaced by Identity on both sides (torch's SyncBatchNorm needs CUDA), so what is
compared is exactly the cross-rank logic: gathers, all-reduced sums, queues, DDP averaging.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_zoo.data.views import Views
from ssl_zoo.method import TrainContext


def kill_launcher_and_ranks(proc) -> None:
    """SIGKILL a ``--nproc`` launcher (a Popen started with ``start_new_session``) and the rank
    processes it started. torchrun starts every rank in a session of its own, so killing the
    launcher's process group alone leaves the ranks running (and finishing the run)."""
    ranks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == proc.pid:  # parent pid
            ranks.append(int(stat.parent.name))
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in ranks:  # gone before the caller looks at the run directory
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyNet(nn.Module):
    """A BN-free backbone: conv, ReLU, global pool, 24-d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def strip_batch_norm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            strip_batch_norm(child)
    return module


def make_inputs(batch: int, sizes: list[tuple[int, int]], seed: int = 0):
    """Fixed crops: per group (count, size) a (count, batch, 3, s, s) tensor, plus indices."""
    g = torch.Generator().manual_seed(seed)
    groups = [torch.randn(count, batch, 3, s, s, generator=g) for count, s in sizes]
    return groups, torch.arange(batch)


def local_views(groups, index, rank: int, world: int) -> Views:
    b = groups[0].shape[1] // world
    part = [g[:, rank * b:(rank + 1) * b].reshape(-1, *g.shape[2:]) for g in groups]
    return Views(part, [g.shape[0] for g in groups], index[rank * b:(rank + 1) * b])


def run_steps(build, groups, index, rank: int, world: int, steps: int, epoch_start_data=None):
    """``steps`` optimiser steps on this rank's share; returns (losses, state_dict)."""
    torch.manual_seed(0)
    method = strip_batch_norm(build())
    model = method
    if world > 1:
        model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    n = groups[0].shape[1]

    def eval_batches(batch_size=None):
        # this rank's strided share of the "dataset" (the first crop of every image)
        per = n // world
        idx = index[rank * per:(rank + 1) * per]
        yield groups[0][0][rank * per:(rank + 1) * per], idx

    ctx = TrainContext(epoch=0, step=0, steps_per_epoch=steps, total_steps=steps * 4,
                       rank=rank, world_size=world, dataset_size=n, eval_batches=eval_batches)
    method.on_train_start(ctx)
    losses = []
    for step in range(steps):
        ctx.step = step
        ctx.epoch = step  # every step starts a new "epoch" so epoch hooks are exercised too
        method.on_epoch_start(ctx)
        views = local_views(groups, index, rank, world)
        out = model(views, ctx)
        out.loss.backward()
        method.before_optimizer_step(ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_optimizer_step(ctx)
        loss = out.loss.detach().clone()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        losses.append(float(loss))
    return losses, {k: v.detach().clone() for k, v in method.state_dict().items()}


def _worker(rank, world, port, build, groups, index, steps, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses, state = run_steps(build, groups, index, rank, world, steps)
        torch.save({"losses": losses, "state": state}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def compare_one_vs_two(build, groups, index, steps: int = 2):
    """(single-process result, [rank0, rank1] results) for the same global batch."""
    single_losses, single_state = run_steps(build, groups, index, 0, 1, steps)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, free_port(), build, groups, index, steps, tmp), nprocs=2)
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return (single_losses, single_state), ranks
