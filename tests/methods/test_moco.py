"""MoCo v2: InfoNCE against loops and lightly, shuffling BN, queue and momentum in the method."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightly.loss import NTXentLoss
from torch import nn

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo.modules.momentum import momentum_at
from ssl_zoo_methods.moco import MoCo, MoCoConfig, info_nce, info_nce_logits, shuffled_bn_keys


def slow_info_nce(q, k, queue, temperature) -> float:
    """Mean over queries of -log(e^{q.k/T} / (e^{q.k/T} + sum_j e^{q.queue_j/T})), floats."""
    def unit(r):
        s = math.sqrt(sum(v * v for v in r))
        return [v / s for v in r]

    total = 0.0
    for qi, ki in zip(q.double().tolist(), k.double().tolist()):
        qi, ki = unit(qi), unit(ki)
        pos = math.exp(sum(a * b for a, b in zip(qi, ki)) / temperature)
        neg = sum(math.exp(sum(a * b for a, b in zip(qi, nj)) / temperature)
                  for nj in queue.double().tolist())
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 9), d=st.integers(1, 5), t=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_info_nce_matches_loops(n, k, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    q, key = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    queue = _unit(torch.randn(k, d, generator=g))
    got = info_nce(q.double(), key.double(), queue.double(), t).item()
    assert got == pytest.approx(slow_info_nce(q, key, queue, t), rel=1e-5, abs=1e-6)


def test_info_nce_matches_lightly_memory_bank():
    torch.manual_seed(0)
    n, k, d, t = 8, 32, 6, 0.2
    lightly_loss = NTXentLoss(temperature=t, memory_bank_size=(k, d))
    queue = lightly_loss.memory_bank.bank.clone()  # lightly's own random unit vectors
    q = torch.randn(n, d, requires_grad=True)
    key = torch.randn(n, d)
    theirs = lightly_loss(q, key)  # scores against the bank, then enqueues `key`
    ours = info_nce(q, key, queue, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # both queues now start with the new (normalised) keys
    from ssl_zoo.modules.queue import FeatureQueue

    fq = FeatureQueue(k, d)
    fq.features.copy_(queue)
    fq.enqueue(_unit(key))
    torch.testing.assert_close(fq.features, lightly_loss.memory_bank.bank)


def test_logits_layout():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 2.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    torch.testing.assert_close(info_nce_logits(q, k, queue, 0.5), torch.tensor([[0.0, 2.0, -2.0]]))


# --------------------------------------------------------------------------------------------
# shuffling BN
# --------------------------------------------------------------------------------------------
def test_shuffled_keys_restore_order():
    torch.manual_seed(0)
    enc = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    for groups in (1, 2, 5):
        local, everyone = shuffled_bn_keys(enc, x, groups)
        torch.testing.assert_close(local, enc(x).detach())
        torch.testing.assert_close(everyone, local)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_shuffled_keys_normalise_within_random_groups(groups):
    """With a 'batch norm' that subtracts the batch mean, x_i - key_i is the mean of the group
    that held image i: exactly ``groups`` distinct values, each the mean of its members."""
    torch.manual_seed(1)
    x = torch.randn(12, 1, dtype=torch.float64)
    keys, _ = shuffled_bn_keys(lambda b: b - b.mean(0, keepdim=True), x, groups)
    offsets = (x - keys).squeeze(1)
    values = torch.unique(offsets.round(decimals=9))
    assert len(values) == groups
    members = [torch.isclose(offsets, v, atol=1e-8) for v in values]
    for mask in members:
        assert int(mask.sum()) == 12 // groups
        torch.testing.assert_close(x[mask].mean(), offsets[mask][0])
    if groups > 1:  # the groups are a random partition, not the batch's contiguous chunks
        chunks = [set(range(i, i + 12 // groups)) for i in range(0, 12, 12 // groups)]
        seen = [set(torch.nonzero(mask).squeeze(1).tolist()) for mask in members]
        assert any(s not in chunks for s in seen)


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _method(**kw) -> MoCo:
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    cfg = MoCoConfig(**{"queue_length": 64, "proj_dim": 16, **kw})
    return MoCo(net, net.out_dim, cfg)


def _views(n: int = 16, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    crops = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]
    return Views.from_crops(crops, torch.arange(n))


def test_config_validation():
    MoCoConfig().validate(32, 128, 2000)
    MoCoConfig(queue_length=1000).validate(32, 100, 2000)  # the queue wraps around exactly
    with pytest.raises(ConfigError, match="queue_length must be >= 1"):
        MoCoConfig(queue_length=0).validate(32, 128, 5000)
    with pytest.raises(ConfigError, match=r"not smaller than the dataset .*e\.g\. 1920"):
        MoCoConfig(queue_length=4096).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="momentum"):
        MoCoConfig(momentum=1.0).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="momentum_schedule"):
        MoCoConfig(momentum_schedule="linear").validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="shuffle_bn_groups"):
        MoCoConfig(shuffle_bn_groups=100, queue_length=128).validate(32, 128, 2000)


def test_default_views():
    spec = MoCo.default_views(MoCoConfig(), 32)
    assert spec.num_crops == 2 and spec.groups[0].scale == (0.2, 1.0)


def test_key_encoder_is_a_frozen_copy():
    m = _method()
    assert all(not p.requires_grad for p in m.key_backbone.parameters())
    assert all(not p.requires_grad for p in m.key_head.parameters())
    names = {n for n, _ in m.trainable_parameters()}
    assert not any(n.startswith(("key_", "queue")) for n in names)
    for pk, pq in zip(m.key_backbone.parameters(), m.backbone.parameters()):
        assert torch.equal(pk, pq)


def test_loss_uses_queue_before_update_then_enqueues_keys():
    m = _method(shuffle_bn_groups=1)
    views = _views()
    queue_before = m.queue.features.clone()
    with torch.no_grad():
        expected_keys = m.key(views[1])  # one BN group: same statistics as the shuffled pass
        queries = m.query(views[0])
    out = m(views)
    assert torch.equal(m.queue.features, queue_before)  # keys enter after the step
    m.after_optimizer_step(TrainContext())
    expected = info_nce(queries, expected_keys, queue_before, m.config.temperature)
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.queue.features[:16], expected_keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.queue.features[16:], queue_before[16:])
    assert int(m.queue.ptr) == 16
    # top-1: the share of queries whose positive beats every negative, counted by hand
    q_unit, k_unit = _unit(queries.double()), _unit(expected_keys.double())
    wins = sum(float(q_unit[i] @ k_unit[i]) > float((queue_before.double() @ q_unit[i]).max())
               for i in range(16))
    assert float(out.metrics["instance_top1"]) == pytest.approx(wins / 16, abs=1e-6)


def test_symmetric_loss_is_mean_of_both_directions():
    m = _method(shuffle_bn_groups=1, symmetric=True)
    views = _views()
    queue_before = m.queue.features.clone()
    with torch.no_grad():
        k0, k1 = m.key(views[0]), m.key(views[1])
        q0, q1 = m.query(views[0]), m.query(views[1])
    out = m(views)
    m.after_optimizer_step(TrainContext())
    t = m.config.temperature
    expected = (info_nce(q0, k1, queue_before, t) + info_nce(q1, k0, queue_before, t)) / 2
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    assert int(m.queue.ptr) == 32


def test_momentum_hook_matches_hand_update_and_schedule():
    m = _method(momentum_schedule="cosine", momentum=0.9)
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.head.parameters()]:
            p.add_(0.5)
    pairs = [(m.key_backbone, m.backbone), (m.key_head, m.head)]
    before = [[p.clone() for p in key.parameters()] for key, _ in pairs]
    online = [[p.clone() for p in query.parameters()] for _, query in pairs]
    ctx = TrainContext(step=25, total_steps=100)
    mom = 1 - (1 - 0.9) * (math.cos(math.pi * 25 / 100) + 1) / 2  # BYOL's cosine, by hand
    assert momentum_at(25, 100, 0.9, "cosine") == pytest.approx(mom, rel=1e-12)
    m.after_optimizer_step(ctx)
    for (key, _), k_before, q_now in zip(pairs, before, online):
        assert len(k_before) > 0
        for pk, k0, q0 in zip(key.parameters(), k_before, q_now):
            assert not torch.equal(k0, q0)  # the update has something to move
            torch.testing.assert_close(pk, mom * k0 + (1 - mom) * q0)


def test_state_dict_resumes_queue_and_key_encoder():
    m = _method()
    for s in range(3):
        m(_views(seed=s))
        m.after_optimizer_step(TrainContext(step=s))
    fresh = _method()
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh.queue.features, m.queue.features)
    assert int(fresh.queue.ptr) == int(m.queue.ptr) == 48
    torch.manual_seed(7)
    a = m(_views(seed=9)).loss
    torch.manual_seed(7)
    b = fresh(_views(seed=9)).loss
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("symmetric", [False, True])
def test_steps_run_and_reach_every_parameter(symmetric):
    m = _method(symmetric=symmetric)
    opt = torch.optim.Adam([p for _, p in m.trainable_parameters()], lr=1e-3)
    ctx = TrainContext(total_steps=4)
    key_before = [p.clone() for p in m.key_backbone.parameters()]
    for step in range(4):
        ctx.step = step
        out = m(_views(seed=step))
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        for name, p in m.trainable_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert all(p.grad is None for p in m.key_backbone.parameters())
        opt.step()
        m.after_optimizer_step(ctx)
    assert any(not torch.equal(a, b) for a, b in zip(key_before, m.key_backbone.parameters()))


def test_wrong_number_of_crops():
    m = _method()
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ConfigError, match="exactly 2 crops"):
        m(Views.from_crops([x, x, x]))


def test_a_skipped_step_changes_neither_queue_nor_key_encoder():
    m = _method()
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.5)  # online and key encoders differ, so an EMA step would move the keys
    queue = m.queue.features.clone()
    keys = [p.clone() for p in m.key_backbone.parameters()]
    m(_views())
    m.after_optimizer_step(TrainContext(step=0, total_steps=10, step_ok=torch.tensor(False)))
    assert torch.equal(m.queue.features, queue)
    assert all(torch.equal(a, b) for a, b in zip(m.key_backbone.parameters(), keys))
    m(_views(seed=1))
    m.after_optimizer_step(TrainContext(step=1, total_steps=10, step_ok=torch.tensor(True)))
    assert not torch.equal(m.queue.features, queue)
    assert not any(torch.equal(a, b) for a, b in zip(m.key_backbone.parameters(), keys))
