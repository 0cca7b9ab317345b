"""BYOL: the loss against lightly's NegativeCosineSimilarity and a float64 formula, the views,
and the method (target EMA masked by step_ok, online network evaluated, resume)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightly.loss import NegativeCosineSimilarity

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo.modules.momentum import momentum_at
from ssl_zoo_methods.byol import BYOL, BYOLConfig, byol_loss, regression_loss


def slow_byol_loss(p1, p2, z1, z2) -> float:
    """Sum over both directions of the batch mean of ||p/|p| - z/|z|||^2, in Python floats."""
    def unit(r):
        s = math.sqrt(sum(v * v for v in r))
        return [v / s for v in r]

    def direction(p, z):
        total = 0.0
        for pi, zi in zip(p.double().tolist(), z.double().tolist()):
            total += sum((a - b) ** 2 for a, b in zip(unit(pi), unit(zi)))
        return total / len(p)

    return direction(p1, z2) + direction(p2, z1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_byol_loss_matches_the_squared_distance_of_unit_vectors(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    p1, p2, z1, z2 = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4))
    got = float(byol_loss(p1, p2, z1, z2))
    assert got == pytest.approx(slow_byol_loss(p1, p2, z1, z2), rel=1e-9, abs=1e-9)
    assert 0 <= got <= 8 + 1e-9
    assert float(byol_loss(p1, p2, p2 * 3.0, p1 * 0.5)) == pytest.approx(0.0, abs=1e-9)


def test_byol_loss_matches_lightly_negative_cosine_similarity():
    """lightly's BYOL example: 0.5 (ncs(p0, z1) + ncs(p1, z0)); ours is 4 + 4 times that."""
    torch.manual_seed(0)
    p1, p2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    ncs = NegativeCosineSimilarity()
    theirs = 0.5 * (ncs(p1, z2) + ncs(p2, z1))
    ours = byol_loss(p1, p2, z1, z2)
    torch.testing.assert_close(ours, 4 + 4 * theirs, rtol=1e-6, atol=1e-6)
    g_ours = torch.autograd.grad(ours, (p1, p2))
    g_theirs = torch.autograd.grad(4 * theirs, (p1, p2))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_no_gradient_reaches_the_target():
    z = torch.randn(4, 3, requires_grad=True)
    regression_loss(torch.randn(4, 3, requires_grad=True), z).sum().backward()
    assert z.grad is None


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _method(**kw) -> BYOL:
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    cfg = BYOLConfig(**{"proj_hidden_dim": 32, "proj_dim": 8, "pred_hidden_dim": 32, **kw})
    return BYOL(net, net.out_dim, cfg)


def _views(n: int = 8, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return Views.from_crops([x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)],
                            torch.arange(n))


def test_config_and_views():
    BYOLConfig().validate(32, 128, 2000)
    for bad in ({"momentum": 1.0}, {"momentum_schedule": "step"}, {"proj_dim": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            BYOLConfig(**bad).validate(32, 128, 2000)
    big = BYOL.default_views(BYOLConfig(), 224)
    assert [(g.count, g.size, g.blur_p, g.solarize_p) for g in big.groups] == [
        (1, 224, 1.0, 0.0), (1, 224, 0.1, 0.2)]
    assert all(g.scale == (0.08, 1.0) and g.saturation == 0.2 for g in big.groups)
    small = BYOL.default_views(BYOLConfig(), 32)
    assert [(g.blur_p, g.solarize_p) for g in small.groups] == [(0.0, 0.0), (0.0, 0.2)]
    BYOL.check_views(BYOLConfig(), small)
    small.groups[1].count = 2
    with pytest.raises(ConfigError, match="exactly 2 crops"):
        BYOL.check_views(BYOLConfig(), small)


def test_target_is_frozen_and_the_online_encoder_is_evaluated():
    m = _method()
    names = {n for n, _ in m.trainable_parameters()}
    assert not any(n.startswith("target_") for n in names)
    assert any(n.startswith("predictor.") for n in names)
    assert BYOL.default_eval_network == "online"
    assert m.eval_networks()["online"] is m.backbone
    assert m.eval_networks()["target"] is m.target_backbone
    assert m.eval_network() is m.backbone and m.eval_network("target") is m.target_backbone
    with pytest.raises(ConfigError, match="choices: online, target"):
        m.eval_network("teacher")


def test_forward_is_the_symmetric_loss_of_online_predictions_against_target_projections():
    m = _method()
    views = _views()
    with torch.no_grad():
        out = m(views)
        both = torch.cat([views[0], views[1]])  # one batch, as the method's heads see them
        p1, p2 = m.predictor(m.projector(m.backbone(both))).chunk(2)
        z1, z2 = m.target_projector(m.target_backbone(both)).chunk(2)
    assert float(out.loss) == pytest.approx(slow_byol_loss(p1, p2, z1, z2), rel=1e-5)


def test_target_moves_by_the_cosine_momentum_unless_the_step_was_skipped():
    m = _method(momentum=0.9)
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.projector.parameters()]:
            p.add_(0.5)
    pairs = [(m.target_backbone, m.backbone), (m.target_projector, m.projector)]
    before = [[p.clone() for p in t.parameters()] for t, _ in pairs]
    online = [[p.clone() for p in o.parameters()] for _, o in pairs]
    m.after_optimizer_step(TrainContext(step=5, total_steps=20, step_ok=torch.tensor(False)))
    for (t, _), b in zip(pairs, before):
        assert all(torch.equal(p, q) for p, q in zip(t.parameters(), b))
    mom = 1 - (1 - 0.9) * (math.cos(math.pi * 5 / 20) + 1) / 2
    assert momentum_at(5, 20, 0.9, "cosine") == pytest.approx(mom, rel=1e-12)
    m.after_optimizer_step(TrainContext(step=5, total_steps=20, step_ok=torch.tensor(True)))
    for (t, _), b, o in zip(pairs, before, online):
        for p, k0, q0 in zip(t.parameters(), b, o):
            torch.testing.assert_close(p, mom * k0 + (1 - mom) * q0)


def test_steps_run_reach_every_parameter_and_resume_exactly():
    m = _method()
    opt = torch.optim.Adam([p for _, p in m.trainable_parameters()], lr=1e-3)
    ctx = TrainContext(total_steps=6)
    for step in range(3):
        ctx.step = step
        out = m(_views(seed=step))
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        for name, p in m.trainable_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert all(p.grad is None for p in m.target_backbone.parameters())
        opt.step()
        m.after_optimizer_step(ctx)
    fresh = _method()
    fresh.load_state_dict(m.state_dict())
    for a, b in zip(fresh.target_backbone.parameters(), m.target_backbone.parameters()):
        assert torch.equal(a, b)
    torch.manual_seed(7)
    a = m(_views(seed=9)).loss
    torch.manual_seed(7)
    b = fresh(_views(seed=9)).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_wrong_number_of_crops():
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ConfigError, match="exactly 2 crops"):
        _method()(Views.from_crops([x, x, x]))
