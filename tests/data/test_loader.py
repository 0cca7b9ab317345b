from __future__ import annotations

import pytest
import torch

from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import TensorImages
from ssl_zoo.errors import DataError


def _ds(n=23):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return TensorImages("t", x, torch.arange(n))


def _all(loader, start=0):
    return [i.tolist() for _, i in loader.iterate(start_batch=start)]


def test_order_depends_only_on_seed_and_epoch():
    a, b = BatchLoader(_ds(), 4, seed=1), BatchLoader(_ds(), 4, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert _all(a) == _all(b)
    b.set_epoch(3)
    assert _all(a) != _all(b)
    images, index = next(BatchLoader(_ds(), 4, seed=1).iterate())
    assert torch.equal(images[:, 0, 0, 0].long(), index)  # the images of those indices


def test_ranks_are_disjoint_and_cover_the_epoch():
    ds = _ds(24)
    ranks = [BatchLoader(ds, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [sum(_all(lo), []) for lo in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 4
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 24


def test_start_batch_skips_exactly():
    lo = BatchLoader(_ds(), 4, seed=0)
    assert _all(lo, 2) == _all(lo)[2:]


def test_drop_last_and_padding():
    assert len(BatchLoader(_ds(23), 4)) == 5
    lo = BatchLoader(_ds(23), 4, shuffle=False, drop_last=False)
    assert len(lo) == 6 and sum(_all(lo), []) == list(range(23))
    two = [BatchLoader(_ds(23), 4, shuffle=False, drop_last=False, rank=r, world_size=2)
           for r in range(2)]
    assert len(two[0]) == len(two[1]) == 3  # 12 positions each, one wrapped around
    with pytest.raises(DataError, match="larger than the dataset"):
        BatchLoader(_ds(10), 8, world_size=2)
