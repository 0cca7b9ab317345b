"""SimCLR: NT-Xent against loops in float64 and against lightly; multi-crop; a few steps."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightly.loss import NTXentLoss

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo_methods.simclr import SimCLR, SimCLRConfig, nt_xent


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


def _dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v))


def slow_nt_xent(z_a, z_b, temperature, local_z=()) -> float:
    """Mean over (anchor, positive) pairs of -log(e^{s(x,p)} / (e^{s(x,p)} + sum over the
    global crops of the other images)), with Python floats."""
    a, b = _unit(z_a.double().tolist()), _unit(z_b.double().tolist())
    locs = [_unit(z.double().tolist()) for z in local_z]
    n = len(a)
    pairs = [(a[i], b[i], i) for i in range(n)] + [(b[i], a[i], i) for i in range(n)]
    for loc in locs:
        pairs += [(loc[i], a[i], i) for i in range(n)] + [(loc[i], b[i], i) for i in range(n)]
    total = 0.0
    for x, p, i in pairs:
        num = math.exp(_dot(x, p) / temperature)
        den = num
        for m in range(n):
            if m != i:
                den += math.exp(_dot(x, a[m]) / temperature) + math.exp(_dot(x, b[m]) / temperature)
        total += -math.log(num / den)
    return total / len(pairs)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 6), t=st.floats(0.05, 2.0),
       seed=st.integers(0, 2**16))
def test_nt_xent_matches_loops(n, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = nt_xent(z_a.double(), z_b.double(), t)
    assert got.item() == pytest.approx(slow_nt_xent(z_a, z_b, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_lightly(temperature):
    torch.manual_seed(1)
    z_a, z_b = torch.randn(16, 8), torch.randn(16, 8)
    ours = nt_xent(z_a, z_b, temperature)
    theirs = NTXentLoss(temperature=temperature)(z_a, z_b)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 5), n_local=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_multi_crop_matches_loop_definition(n, n_local, seed):
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    locs = [torch.randn(n, 4, generator=g) for _ in range(n_local)]
    got = nt_xent(z_a.double(), z_b.double(), 0.3, local_z=[z.double() for z in locs])
    assert got.item() == pytest.approx(slow_nt_xent(z_a, z_b, 0.3, locs), rel=1e-5, abs=1e-6)


def test_gradient_matches_float64_autograd_of_loops():
    torch.manual_seed(2)
    z_a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    nt_xent(z_a, z_b, 0.5).backward()
    # finite differences of the loop version
    eps = 1e-6
    for z, grad in ((z_a, z_a.grad), (z_b, z_b.grad)):
        for i, j in [(0, 0), (3, 2), (4, 1)]:
            with torch.no_grad():
                z[i, j] += eps
                up = slow_nt_xent(z_a.detach(), z_b.detach(), 0.5)
                z[i, j] -= 2 * eps
                down = slow_nt_xent(z_a.detach(), z_b.detach(), 0.5)
                z[i, j] += eps
            assert grad[i, j].item() == pytest.approx((up - down) / (2 * eps), abs=1e-6)


def test_agreeing_views_score_lower_than_random():
    torch.manual_seed(3)
    z = torch.randn(32, 16)
    agreeing = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.5)
    random = nt_xent(z, torch.randn_like(z), 0.5)
    assert agreeing < random
    # the loss is invariant to the scale of the embeddings (cosine similarity)
    torch.testing.assert_close(nt_xent(3 * z, z, 0.5), nt_xent(z, z, 0.5))


def test_gather_flag_is_a_no_op_in_one_process():
    torch.manual_seed(4)
    z_a, z_b, loc = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(nt_xent(z_a, z_b, 0.2, [loc], gather_distributed=True),
                               nt_xent(z_a, z_b, 0.2, [loc]))


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _tiny_views(x: torch.Tensor, n_local: int = 0, noise: float = 0.1, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [x + noise * torch.randn(x.shape, generator=g) for _ in range(2)]
    small = torch.nn.functional.avg_pool2d(x, 2)
    crops += [small + noise * torch.randn(small.shape, generator=g) for _ in range(n_local)]
    return Views.from_crops(crops, torch.arange(len(x)))


def test_config_validation():
    SimCLRConfig().validate(32, 128, 1000)
    with pytest.raises(ConfigError, match="temperature"):
        SimCLRConfig(temperature=0).validate(32, 128, 1000)
    with pytest.raises(ConfigError, match="at least 2 images"):
        SimCLRConfig().validate(32, 1, 1000)
    with pytest.raises(ConfigError, match="local_crop_size"):
        SimCLRConfig(num_local_crops=2, local_crop_size=48).validate(32, 128, 1000)


def test_default_views():
    spec = SimCLR.default_views(SimCLRConfig(), 32)
    assert spec.num_crops == 2 and spec.groups[0].size == 32
    spec = SimCLR.default_views(SimCLRConfig(num_local_crops=4), 32)
    assert [(g.count, g.size) for g in spec.groups] == [(2, 32), (4, 16)]
    assert spec.groups[1].scale == (0.05, 0.14) and spec.groups[0].scale == (0.14, 1.0)


def test_projection_output_is_batch_normalised_as_the_official_head():
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    x = torch.randn(16, 3, 16, 16)
    method = SimCLR(net, net.out_dim, SimCLRConfig(proj_dim=16))
    z = method.head(net(x)).double()  # training mode: the batch's own statistics
    torch.testing.assert_close(z.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(16, dtype=torch.float64),
                               atol=1e-3, rtol=0)  # 1 up to BN's epsilon
    plain = SimCLR(net, net.out_dim, SimCLRConfig(proj_dim=16, proj_output_batch_norm=False))
    assert isinstance(plain.head[-1], torch.nn.Linear)
    assert plain.head(net(x)).mean(0).abs().max() > 1e-3


@pytest.mark.parametrize("n_local", [0, 2])
def test_steps_reduce_loss_and_reach_every_parameter(n_local):
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    method = SimCLR(net, net.out_dim, SimCLRConfig(proj_dim=16, num_local_crops=n_local))
    x = torch.randn(16, 3, 16, 16)
    views = _tiny_views(x, n_local)
    opt = torch.optim.Adam([p for _, p in method.trainable_parameters()], lr=3e-3)
    losses = []
    for step in range(8):
        out = method(views)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        if step == 0:
            for name, p in method.trainable_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert "pos_cosine" in out.metrics
