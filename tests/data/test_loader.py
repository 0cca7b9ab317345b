"""BatchLoader: seeded order, rank sharding, drop_last, exact mid-epoch skipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import TensorImages, open_source
from ssl_zoo.errors import DataError


class _Counting(TensorImages):
    """Image i is filled with i % 256; counts the images loaded."""

    def __init__(self, n):
        x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2)
        super().__init__("t", x.contiguous(), torch.arange(n))
        self.loaded = 0

    def load(self, index):
        self.loaded += len(index)
        return super().load(index)


def _all(loader, start=0):
    return [i.tolist() for _, i, _ in loader.iterate(start_batch=start)]


def test_order_depends_only_on_seed_and_epoch():
    def order(seed, epoch, batch=4, world=1):
        los = [BatchLoader(_Counting(23), batch, seed=seed, rank=r, world_size=world,
                           drop_last=False) for r in range(world)]
        for lo in los:
            lo.set_epoch(epoch)
        shares = [sum(_all(lo), []) for lo in los]
        # interleave the ranks' shares back into the epoch's order (strided sharding)
        return [shares[p % world][p // world] for p in range(len(shares[0]) * world)][:23]

    a = order(1, 2)
    assert sorted(a) == list(range(23))
    assert a == order(1, 2) == order(1, 2, batch=5) == order(1, 2, world=3)  # same every rank
    assert a != order(1, 3) and a != order(2, 2)
    lo = BatchLoader(_Counting(23), 4, seed=1, drop_last=False)
    lo.set_epoch(2)
    first = _all(lo)
    lo.set_epoch(5)
    _all(lo)
    lo.set_epoch(2)
    assert _all(lo) == first  # no hidden state carried between epochs
    images, index, sizes = next(BatchLoader(_Counting(23), 4, seed=1).iterate())
    assert torch.equal(images[:, 0, 0, 0].long(), index)  # the images of those indices
    assert sizes is None  # in-memory images are their own originals


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), batch=st.integers(1, 9), world=st.integers(1, 4),
       drop_last=st.booleans(), seed=st.integers(0, 2**31), epoch=st.integers(0, 5))
def test_sharding_properties(n, batch, world, drop_last, seed, epoch):
    if drop_last and batch * world > n:
        with pytest.raises(DataError, match=f"larger than the dataset \\({n} images\\)"):
            BatchLoader(_Counting(n), batch, drop_last=True, world_size=world)
        return
    ds = _Counting(n)
    loaders = [BatchLoader(ds, batch, seed=seed, rank=r, world_size=world, drop_last=drop_last)
               for r in range(world)]
    for lo in loaders:
        lo.set_epoch(epoch)
    per_rank = [_all(lo) for lo in loaders]
    assert len({len(lo) for lo in loaders}) == 1  # every rank steps the same number of times
    for lo, batches in zip(loaders, per_rank):
        assert len(batches) == len(lo)
        assert all(len(b) == batch for b in batches[:-1])
        assert len(batches[-1]) == batch or not drop_last
    flat = [sum(b, []) for b in per_rank]
    assert len({len(f) for f in flat}) == 1  # equal shares
    seen = sum(flat, [])
    if drop_last:
        global_batch = batch * world
        assert len(seen) == len(set(seen)) == n // global_batch * global_batch  # disjoint
        assert len(loaders[0]) == n // global_batch
    else:
        assert set(seen) == set(range(n))  # everything, padded by wrapping around
        assert len(seen) == -(-n // world) * world


@pytest.mark.parametrize("lazy_workers", [None, 0, 2])
def test_start_batch_skips_exactly_and_loads_nothing_skipped(tmp_path, lazy_workers):
    if lazy_workers is None:
        ds = _Counting(23)
    else:
        for i in range(10):
            Image.fromarray(np.full((6, 6, 3), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
        ds = open_source(f"folder:{tmp_path}", image_size=6).train
    lo = BatchLoader(ds, 3, seed=4, drop_last=False, num_workers=lazy_workers or 0)
    lo.set_epoch(1)
    full = list(lo.iterate())
    for start in range(len(lo) + 1):
        part = list(lo.iterate(start_batch=start))
        assert len(part) == len(full) - start
        for (xa, ia, sa), (xb, ib, sb) in zip(part, full[start:]):
            assert torch.equal(ia, ib) and torch.equal(xa, xb)
            assert (sa is None) == (sb is None) == (lazy_workers is None)
            assert sa is None or torch.equal(sa, sb)
    if lazy_workers is None:
        ds.loaded = 0
        list(lo.iterate(start_batch=5))
        assert ds.loaded == 23 - 15  # skipped batches are never loaded


def test_drop_last_and_padding():
    assert len(BatchLoader(_Counting(23), 4)) == 5
    lo = BatchLoader(_Counting(23), 4, shuffle=False, drop_last=False)
    assert len(lo) == 6 and sum(_all(lo), []) == list(range(23))
    two = [BatchLoader(_Counting(23), 4, shuffle=False, drop_last=False, rank=r, world_size=2)
           for r in range(2)]
    assert [_all(lo) for lo in two] == [[[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22]],
                                        [[1, 3, 5, 7], [9, 11, 13, 15], [17, 19, 21, 0]]]
    tiny = [sum(_all(BatchLoader(_Counting(1), 2, shuffle=False, drop_last=False, rank=r,
                                 world_size=3)), []) for r in range(3)]
    assert tiny == [[0], [0], [0]]  # fewer images than ranks: each rank still gets one
    with pytest.raises(DataError, match=r"batch of 16 images .* larger than the dataset "
                                        r"\(10 images\); use a batch size of at most 5"):
        BatchLoader(_Counting(10), 8, world_size=2)


def test_bad_arguments():
    with pytest.raises(DataError, match="batch size must be >= 1"):
        BatchLoader(_Counting(4), 0)
    with pytest.raises(DataError, match="rank 2 is not in 0..1"):
        BatchLoader(_Counting(4), 1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        list(BatchLoader(_Counting(4), 1).iterate(start_batch=-1))
    assert list(BatchLoader(_Counting(4), 1).iterate(start_batch=9)) == []
