"""SyncBatchNorm process groups (train.sync_bn_group_size) on 2 gloo processes (CPU). CPU
SyncBatchNorm does not run (torch wants a GPU), so the groups are checked by what a sum over
each one gives and by where the trainer's conversion puts them."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_zoo.errors import ConfigError
from ssl_zoo.modules.distributed import sync_bn_process_group

WORLD = 2


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=WORLD)
    try:
        out = {}
        for size in (0, 1, 2):
            group = sync_bn_process_group(size)
            total = torch.tensor(float(rank + 1))
            dist.all_reduce(total, group=group)  # what SyncBatchNorm's statistics sum over
            net = nn.SyncBatchNorm.convert_sync_batchnorm(
                nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), process_group=group)
            out[size] = (group is None, float(total), net[1].process_group is group)
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_groups_of_one_keep_each_rank_alone_and_zero_means_all(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r, got in enumerate(ranks):
        assert got[0] == (True, 3.0, True)  # 0: all processes (the default group)
        assert got[2] == (True, 3.0, True)  # the world size: the same
        assert got[1] == (False, float(r + 1), True)  # groups of 1: each rank alone
    assert sync_bn_process_group(8) is None  # one process: nothing to group


def test_a_size_that_does_not_divide_the_processes_is_a_config_error(monkeypatch):
    import pytest

    import ssl_zoo.modules.distributed as D

    monkeypatch.setattr(D, "get_world_size", lambda: 6)
    with pytest.raises(ConfigError, match="sync_bn_group_size 4 does not divide the 6"):
        sync_bn_process_group(4)
