"""FeatureQueue: ring-buffer contents against a plain Python model of a FIFO, and resume."""

from __future__ import annotations

from collections import deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.modules.queue import FeatureQueue


def _model_after(init: torch.Tensor, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The expected queue as a FIFO of rows: oldest dropped first, newest kept."""
    fifo = deque([row for row in init], maxlen=len(init))
    for b in batches:
        for row in b:
            fifo.append(row)
    return list(fifo)


def _as_fifo(q: FeatureQueue) -> list[torch.Tensor]:
    """The queue's rows from oldest to newest, read through the write pointer."""
    start = int(q.ptr)
    return [q.features[(start + i) % q.length] for i in range(q.length)]


def test_init_is_unit_vectors_and_empty():
    q = FeatureQueue(10, 4)
    assert q.features.shape == (10, 4)
    torch.testing.assert_close(q.features.norm(dim=1), torch.ones(10))
    assert int(q.ptr) == 0 and int(q.filled) == 0
    assert q.valid().shape == (0, 4)


def test_several_enqueues_with_wrap_around():
    q = FeatureQueue(7, 3)
    init = q.features.clone()
    batches = [torch.full((3, 3), float(i + 1)) + torch.arange(3.0)[:, None] / 10
               for i in range(5)]
    for i, b in enumerate(batches):
        q.enqueue(b)
        expected = _model_after(init, batches[: i + 1])
        torch.testing.assert_close(torch.stack(_as_fifo(q)), torch.stack(expected))
        assert int(q.filled) == min(3 * (i + 1), 7)
        assert int(q.ptr) == (3 * (i + 1)) % 7
    # 15 keys into 7 slots: the newest 7 keys, oldest first
    torch.testing.assert_close(q.valid(), torch.cat(batches)[-7:])


def test_valid_before_full_is_written_rows_in_order():
    q = FeatureQueue(8, 2)
    a, b = torch.ones(3, 2), 2 * torch.ones(2, 2)
    q.enqueue(a)
    q.enqueue(b)
    torch.testing.assert_close(q.valid(), torch.cat([a, b]))


def test_more_keys_than_slots_keeps_newest():
    q = FeatureQueue(4, 1)
    q.enqueue(torch.arange(2.0)[:, None])
    q.enqueue(torch.arange(10.0, 20.0)[:, None])  # 10 keys at once into 4 slots
    torch.testing.assert_close(q.valid().squeeze(1), torch.arange(16.0, 20.0))
    assert int(q.ptr) == 12 % 4


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 9), sizes=st.lists(st.integers(0, 12), min_size=1, max_size=6))
def test_matches_fifo_model(length, sizes):
    q = FeatureQueue(length, 2)
    init = q.features.clone()
    batches, start = [], 0
    for n in sizes:
        batches.append(torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 2))
        start += n
        q.enqueue(batches[-1])
    torch.testing.assert_close(torch.stack(_as_fifo(q)), torch.stack(_model_after(init, batches)))
    assert int(q.filled) == min(start, length)


def test_state_dict_round_trip_into_fresh_module():
    q = FeatureQueue(6, 3, seed=1)
    for _ in range(4):
        q.enqueue(torch.randn(4, 3))
    fresh = FeatureQueue(6, 3, seed=2)
    assert not torch.equal(fresh.features, q.features)
    fresh.load_state_dict(q.state_dict())
    assert set(q.state_dict()) == {"features", "written", "ptr", "filled"}
    torch.testing.assert_close(fresh.features, q.features)
    assert int(fresh.ptr) == int(q.ptr) and int(fresh.filled) == int(q.filled)
    assert torch.equal(fresh.written, q.written)
    nxt = torch.randn(4, 3)
    q.enqueue(nxt)
    fresh.enqueue(nxt)
    torch.testing.assert_close(fresh.features, q.features)


def test_forward_is_a_copy_so_backward_survives_enqueue():
    q = FeatureQueue(5, 3)
    x = torch.randn(2, 3, requires_grad=True)
    loss = (x @ q().t()).sum()
    q.enqueue(torch.randn(5, 3))
    loss.backward()  # would fail if the saved negatives had been changed in place
    assert x.grad is not None


def test_wrong_shape_is_rejected():
    q = FeatureQueue(5, 3)
    with pytest.raises(ValueError):
        q.enqueue(torch.randn(2, 4))


def test_written_flags_follow_the_fifo_and_skipped_writes():
    """A write with ``valid`` False (a skipped training step) keeps the slots' contents and their
    flags: during the fill, those slots still hold initial random vectors and stay unwritten
    though the write position passed them; a later good write over them sets them."""
    q = FeatureQueue(6, 2)
    init = q.features.clone()
    assert not q.written.any()
    q.enqueue(torch.ones(2, 2), valid=torch.tensor(True))
    q.enqueue(2 * torch.ones(2, 2), valid=torch.tensor(False))  # skipped during the fill
    q.enqueue(3 * torch.ones(2, 2))
    assert q.is_full and q.filled == 6  # the counters passed every slot ...
    assert q.written.tolist() == [True, True, False, False, True, True]  # ... 2-3 are random
    assert torch.equal(q.features[2:4], init[2:4])
    q.enqueue(4 * torch.ones(2, 2), valid=torch.tensor(False))  # over real ones: they stay
    assert q.written.tolist() == [True, True, False, False, True, True]
    assert torch.equal(q.features[:2], torch.ones(2, 2))
    q.enqueue(5 * torch.ones(2, 2))  # slots 2-3 now
    assert q.written.all() and torch.equal(q.features[2:4], 5 * torch.ones(2, 2))


def test_a_checkpoint_without_written_flags_takes_them_from_its_counters():
    q = FeatureQueue(5, 2)
    q.enqueue(torch.ones(3, 2))
    q.enqueue(torch.ones(4, 2))  # 7 keys: full, ptr 2
    old = {k: v for k, v in q.state_dict().items() if k != "written"}
    fresh = FeatureQueue(5, 2)
    fresh.load_state_dict(old)
    assert fresh.written.all() and fresh.ptr == 2
    part = FeatureQueue(5, 2)
    part.enqueue(torch.ones(2, 2))
    fresh = FeatureQueue(5, 2)
    fresh.load_state_dict({k: v for k, v in part.state_dict().items() if k != "written"})
    assert fresh.written.tolist() == [True, True, False, False, False]
