"""Host counters and checkpoint-sized buffers saved through state_dict (modules/state.py)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from ssl_zoo.modules.state import host_counters, sized_by_checkpoint


class Counted(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("data", torch.zeros(3))
        host_counters(self, steps=0, where=-1)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Counted()
        self.lin = nn.Linear(2, 2)
        host_counters(self, epoch=0)


class OldLayout(nn.Module):
    """How a counter was saved before: a 0-d long buffer of the same name."""

    def __init__(self, steps: int, where: int):
        super().__init__()
        self.register_buffer("data", torch.arange(3.0))
        self.register_buffer("steps", torch.tensor(steps))
        self.register_buffer("where", torch.tensor(where))


def test_counters_are_host_ints_saved_as_named_long_tensors():
    m = Outer()
    assert isinstance(m.inner.steps, int) and m.inner.where == -1
    m.epoch, m.inner.steps, m.inner.where = 3, 17, 5
    state = m.state_dict()
    assert {"epoch", "inner.steps", "inner.where", "inner.data"} <= set(state)
    for key, value in (("epoch", 3), ("inner.steps", 17), ("inner.where", 5)):
        assert state[key].dtype == torch.long and state[key].ndim == 0
        assert int(state[key]) == value
    # the state survives a checkpoint read with weights_only
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = Outer()
    fresh.load_state_dict(torch.load(buf, weights_only=True))  # strict: nothing unexpected
    assert (fresh.epoch, fresh.inner.steps, fresh.inner.where) == (3, 17, 5)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_checkpoints_of_the_buffer_layout_load():
    old = OldLayout(steps=9, where=2)
    fresh = Counted()
    fresh.load_state_dict(old.state_dict())
    assert (fresh.steps, fresh.where) == (9, 2)
    assert torch.equal(fresh.data, torch.arange(3.0))
    assert set(fresh.state_dict()) == set(old.state_dict())


def test_a_missing_counter_is_reported_as_a_missing_buffer_would_be():
    m = Counted()
    m.steps = 4
    state = m.state_dict()
    del state["steps"]
    with pytest.raises(RuntimeError, match="Missing key.*steps"):
        Counted().load_state_dict(state)
    fresh = Counted()
    fresh.steps = 11
    result = fresh.load_state_dict(state, strict=False)
    assert fresh.steps == 11 and result.missing_keys == ["steps"]  # left as it was
    bad = m.state_dict()
    bad["where"] = torch.arange(3)
    with pytest.raises(RuntimeError, match="where: expected one integer"):
        Counted().load_state_dict(bad)


def test_a_deep_copy_saves_its_own_counters():
    m = Outer()
    twin = copy.deepcopy(m)
    twin.inner.steps, twin.epoch = 8, 2
    assert int(twin.state_dict()["inner.steps"]) == 8 and int(twin.state_dict()["epoch"]) == 2
    assert int(m.state_dict()["inner.steps"]) == 0 and int(m.state_dict()["epoch"]) == 0
    twin.load_state_dict(m.state_dict())
    assert (twin.inner.steps, twin.epoch, m.inner.steps) == (0, 0, 0)


def test_a_name_already_taken_is_refused():
    m = nn.Module()
    m.register_buffer("steps", torch.zeros(()))
    with pytest.raises(ValueError, match="steps"):
        host_counters(m, steps=0)


def test_a_buffer_sized_by_the_checkpoint_takes_its_shape():
    class Sized(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.zeros(2, 0, dtype=torch.long))
            sized_by_checkpoint(self, "table")

    src = Sized()
    src.table = torch.arange(10).reshape(2, 5)
    fresh = Sized()
    fresh.load_state_dict(src.state_dict())
    assert fresh.table.dtype == torch.long and torch.equal(fresh.table, src.table)
    assert "table" in dict(fresh.named_buffers())
    plain = nn.Module()
    plain.register_buffer("table", torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(RuntimeError, match="size mismatch"):  # what it saves us from
        plain.load_state_dict(src.state_dict())
