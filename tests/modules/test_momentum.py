"""Momentum encoder: frozen deep copy, EMA update against a hand computation, schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ssl_zoo.modules.momentum import ema_update_, momentum_at, momentum_copy


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_copy_is_frozen_equal_and_independent():
    online = _net()
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for pt, po in zip(target.parameters(), online.parameters()):
        assert torch.equal(pt, po) and pt.data_ptr() != po.data_ptr()
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not torch.equal(target[0].weight, online[0].weight)


def test_ema_update_matches_hand_computation():
    torch.manual_seed(0)
    online, target = _net(), _net()
    before = [p.detach().clone().double() for p in target.parameters()]
    q = [p.detach().clone().double() for p in online.parameters()]
    buffers_before = [b.clone() for b in target.buffers()]
    with torch.no_grad():
        online[1].running_mean.add_(5.0)  # buffers of the online net must not leak over
    m = 0.9
    ema_update_(target, online, m)
    for pk, k0, q0 in zip(target.parameters(), before, q):
        expected = torch.tensor([m * a + (1 - m) * b for a, b in
                                 zip(k0.flatten().tolist(), q0.flatten().tolist())],
                                dtype=torch.float64).reshape(k0.shape)
        torch.testing.assert_close(pk.double(), expected, rtol=1e-6, atol=1e-7)
    for b0, b1 in zip(buffers_before, target.buffers()):
        assert torch.equal(b0, b1)


def test_ema_repeated_converges_to_online_and_m1_is_frozen():
    online, target = _net(), _net()
    frozen = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, target.parameters()))
    for _ in range(200):
        ema_update_(target, online, 0.9)
    for pk, pq in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(pk, pq, rtol=0, atol=1e-6)
    ema_update_(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


def test_ema_rejects_mismatched_modules_and_bad_momentum():
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(3, 4), nn.Linear(3, 5), 0.9)
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(3, 4), nn.Linear(3, 4), 1.5)


def test_constant_schedule():
    assert momentum_at(0, 100, 0.99) == 0.99
    assert momentum_at(99, 100, 0.99, "constant") == 0.99


def test_cosine_schedule_endpoints_and_midpoint():
    base = 0.99
    assert momentum_at(0, 100, base, "cosine") == pytest.approx(base)
    assert momentum_at(50, 100, base, "cosine") == pytest.approx((1 + base) / 2)
    assert momentum_at(100, 100, base, "cosine") == pytest.approx(1.0)
    # BYOL Sec. 3.2: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
    k, total = 17, 60
    expected = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
    assert momentum_at(k, total, base, "cosine") == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(base=st.floats(0.0, 0.999), total=st.integers(1, 1000))
def test_cosine_schedule_is_monotone_between_base_and_one(base, total):
    steps = range(0, total + 1, max(1, total // 7))
    values = [momentum_at(s, total, base, "cosine") for s in steps]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))
    assert all(base - 1e-12 <= v <= 1 + 1e-12 for v in values)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="cosine"):
        momentum_at(0, 10, 0.9, "linear")


def test_momentum_problem_names_what_is_wrong():
    from ssl_zoo.modules.momentum import MOMENTUM_SCHEDULES, momentum_problem

    for schedule in MOMENTUM_SCHEDULES:
        assert momentum_problem(0.0, schedule, "h") is None
        assert momentum_problem(0.999, schedule, "h") is None
    assert momentum_problem(1.0, "cosine", "paper: 0.996") == \
        "momentum must be in [0, 1), got 1.0 (paper: 0.996)"
    assert "[0, 1)" in momentum_problem(-0.1, "cosine", "h")
    assert momentum_problem(0.9, "linear", "h") == \
        "momentum_schedule must be one of constant, cosine, got 'linear'"
