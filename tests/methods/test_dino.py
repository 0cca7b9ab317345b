"""DINO: the loss against lightly and a float64 loop of Algorithm 1, the temperature schedule,
and the method (teacher on the global crops, centre, EMA, frozen last layer, resume)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from lightly.loss import DINOLoss

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo.modules.momentum import momentum_at
from ssl_zoo_methods.dino import DINO, DINOConfig, dino_loss, teacher_temp_at


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------
def loop_dino_loss(student, teacher, center, tps, tpt, teacher_crops=None) -> float:
    """Algorithm 1's H(t, s) over every (teacher crop, other student crop) pair, in Python
    floats: H = -sum_k softmax((t - C) / tpt)_k log softmax(s / tps)_k, batch mean, pair mean."""
    s_all, t_all, c = student.double().tolist(), teacher.double().tolist(), center.tolist()
    crops = list(range(len(t_all))) if teacher_crops is None else list(teacher_crops)

    def softmax(row):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        return [v / sum(e) for v in e]

    total, pairs = 0.0, 0
    for i, t_crop in enumerate(t_all):
        for v, s_crop in enumerate(s_all):
            if v == crops[i]:
                continue
            h = 0.0
            for t_row, s_row in zip(t_crop, s_crop):
                pt = softmax([(a - b) / tpt for a, b in zip(t_row, c)])
                ps = softmax([a / tps for a in s_row])
                h += -sum(p * math.log(q) for p, q in zip(pt, ps))
            total += h / len(t_crop)
            pairs += 1
    return total / pairs


@settings(max_examples=25, deadline=None)
@given(n_teacher=st.integers(1, 3), extra=st.integers(0, 3), b=st.integers(1, 4),
       k=st.integers(2, 6), tps=st.floats(0.05, 1.0), tpt=st.floats(0.02, 1.0),
       seed=st.integers(0, 2**16))
def test_dino_loss_matches_the_algorithm_loop(n_teacher, extra, b, k, tps, tpt, seed):
    n_student = max(n_teacher + extra, 2)
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n_student, b, k, generator=g, dtype=torch.float64)
    teacher = torch.randn(n_teacher, b, k, generator=g, dtype=torch.float64)
    center = torch.randn(k, generator=g, dtype=torch.float64)
    got = float(dino_loss(student, teacher, center, tps, tpt))
    assert got == pytest.approx(loop_dino_loss(student, teacher, center, tps, tpt),
                                rel=1e-5, abs=1e-6)


def test_dino_loss_with_teacher_crops_elsewhere_in_the_student_list():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    center = torch.randn(5, generator=g)
    got = float(dino_loss(student, teacher, center, 0.1, 0.04, teacher_crops=(1, 3)))
    assert got == pytest.approx(loop_dino_loss(student, teacher, center, 0.1, 0.04, (1, 3)),
                                rel=1e-5)
    with pytest.raises(ValueError, match="teacher_crops"):
        dino_loss(student, teacher, center, 0.1, 0.04, teacher_crops=(0, 4))
    with pytest.raises(ValueError, match="at least one"):
        dino_loss(student[:1], teacher[:1], center, 0.1, 0.04)


@pytest.mark.parametrize("n_local", [0, 4])
def test_dino_loss_matches_lightly(n_local):
    torch.manual_seed(0)
    k, b = 32, 8
    teacher = [torch.randn(b, k) for _ in range(2)]
    student = [torch.randn(b, k, requires_grad=True) for _ in range(2 + n_local)]
    center = torch.randn(k)
    theirs_fn = DINOLoss(output_dim=k, warmup_teacher_temp_epochs=0, student_temp=0.1)
    theirs_fn.center.copy_(center.view(1, 1, k))
    theirs = theirs_fn(teacher, student, teacher_temp=0.05)
    ours = dino_loss(torch.stack(student), torch.stack(teacher), center, 0.1, 0.05)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    g_ours = torch.autograd.grad(ours, student)
    g_theirs = torch.autograd.grad(theirs, student)  # (a second call moves lightly's centre)
    for a, c in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), k=st.integers(2, 6), shift=st.floats(-5, 5),
       seed=st.integers(0, 2**16))
def test_dino_loss_properties(b, k, shift, seed):
    """Cross-entropy is at least the teachers' entropy, with equality when every student crop
    predicts the teachers' distribution; shifting all scores of a row changes nothing."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(1, b, k, generator=g, dtype=torch.float64).expand(2, b, k)
    student = torch.randn(3, b, k, generator=g, dtype=torch.float64)
    center = torch.randn(k, generator=g, dtype=torch.float64)
    tps, tpt = 0.1, 0.04
    targets = F.softmax((teacher[0] - center) / tpt, dim=-1)
    entropy = float(-(targets * targets.clamp_min(1e-300).log()).sum(-1).mean())
    loss = float(dino_loss(student, teacher, center, tps, tpt))
    assert loss >= entropy - 1e-9
    perfect = (tps * targets.clamp_min(1e-300).log()).expand(3, b, k)
    assert float(dino_loss(perfect, teacher, center, tps, tpt)) == pytest.approx(entropy,
                                                                                 abs=1e-6)
    assert float(dino_loss(student + shift, teacher + shift, center, tps, tpt)) == \
        pytest.approx(loss, rel=1e-9, abs=1e-9)


def test_teacher_temperature_is_the_official_linspace_then_constant():
    schedule = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])
    got = [teacher_temp_at(e, 30, 0.04, 0.07) for e in range(100)]
    np.testing.assert_allclose(got, schedule, rtol=1e-12)
    assert teacher_temp_at(0, 0, 0.04, 0.07) == 0.07
    assert teacher_temp_at(0, 1, 0.04, 0.07) == 0.04 and teacher_temp_at(1, 1, 0.04, 0.07) == 0.07


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _method(**kw) -> DINO:
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    cfg = DINOConfig(**{"out_dim": 32, "hidden_dim": 24, "bottleneck_dim": 8, **kw})
    return DINO(net, net.out_dim, cfg)


def _views(n: int = 8, seed: int = 0, n_local: int = 2) -> Views:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    glob = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]
    local = [F.avg_pool2d(x, 2) + 0.1 * torch.randn(n, 3, 8, 8, generator=g)
             for _ in range(n_local)]
    return Views.from_crops(glob + local, torch.arange(n))


def test_config_and_views_validation():
    DINOConfig().validate(32, 128, 2000)
    for bad in ({"student_temp": 0}, {"momentum": 1.0}, {"center_momentum": 1.0},
                {"momentum_schedule": "linear"}, {"out_dim": 0},
                {"freeze_last_layer_epochs": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            DINOConfig(**bad).validate(32, 128, 2000)
    spec = DINO.default_views(DINOConfig(), 32)
    assert [(g.count, g.size) for g in spec.groups] == [(1, 32), (1, 32), (6, 16)]
    assert [g.blur_p for g in spec.groups] == [0, 0, 0] and spec.groups[1].solarize_p == 0.2
    big = DINO.default_views(DINOConfig(), 224)
    assert [(g.count, g.size, g.blur_p) for g in big.groups] == [(1, 224, 1.0), (1, 224, 0.1),
                                                                (8, 96, 0.5)]
    assert spec.crop_indices("global") == [0, 1] and spec.crop_indices("local") == [2, 3, 4, 5,
                                                                                 6, 7]
    DINO.check_views(DINOConfig(), spec)
    spec.groups = spec.groups[2:] + spec.groups[:2]  # local crops first: roles still say which
    DINO.check_views(DINOConfig(), spec)
    assert spec.crop_indices("global") == [6, 7]
    spec.groups[2].role = "local"
    with pytest.raises(ConfigError, match="at least 2 global crops"):
        DINO.check_views(DINOConfig(), spec)


def test_teacher_is_a_frozen_copy_and_the_last_layer_norm_is_fixed():
    m = _method()
    names = {n for n, _ in m.trainable_parameters()}
    assert not any(n.startswith("teacher_") for n in names)
    assert "head.last_layer.weight_v" in names and "head.last_layer.weight_g" not in names
    for a, b in zip(m.teacher_head.parameters(), m.head.parameters()):
        assert torch.equal(a, b)
    assert set(m.eval_networks()) == {"teacher", "student"}
    assert m.eval_networks()[DINO.default_eval_network] is m.teacher_backbone
    assert m.eval_networks()["student"] is m.backbone
    assert m.eval_network() is m.teacher_backbone and m.eval_network("student") is m.backbone
    with pytest.raises(ConfigError, match="choices: student, teacher"):
        m.eval_network("online")


def test_forward_is_the_loss_of_student_all_crops_against_teacher_global_crops():
    m = _method()
    views = _views()
    seen = []
    hook = m.teacher_backbone.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        out = m(views)
    hook.remove()
    assert seen == [torch.Size([16, 3, 16, 16])]  # one pass over the 2 global crops only
    with torch.no_grad():  # batch norm: the teacher sees both global crops in one batch,
        # the student each resolution in one batch and the head all crops in one
        teacher = m.teacher_head(m.teacher_backbone(torch.cat([views[0], views[1]])))
        feats = torch.cat([m.backbone(g) for g in views.groups])
        student = m.head(feats).reshape(len(views), 8, 32)
        teacher = teacher.reshape(2, 8, 32)
    expected = loop_dino_loss(student, teacher, torch.zeros(32), 0.1, 0.04)
    assert float(out.loss) == pytest.approx(expected, rel=1e-4)
    assert out.metrics["teacher_temp"] == 0.04 and "teacher_entropy" in out.metrics


def test_the_teacher_sees_the_global_crops_wherever_they_are():
    m = _method()
    v = _views()
    local_first = Views.from_crops([v[2], v[3], v[0], v[1]],
                                   roles=["local", "local", "global", "global"])
    seen = []
    hook = m.teacher_backbone.register_forward_hook(lambda mod, i, o: seen.append(i[0]))
    with torch.no_grad():
        out = m(local_first)
        expected = m(v).loss  # the same crops in the default order: the same pairs
    hook.remove()
    assert torch.equal(seen[0], torch.cat([v[0], v[1]]))
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 2 global crops"):
        m(Views.from_crops([v[0], v[1]], roles=["global", "local"]))


def test_centre_and_teacher_move_after_the_step_unless_it_was_skipped():
    m = _method(momentum_schedule="constant", momentum=0.9)
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.head.parameters()]:
            p.add_(0.05)  # student and teacher differ, so an EMA step moves the teacher
    teacher_before = [p.clone() for p in m.teacher_head.parameters()]
    student = [p.clone() for p in m.head.parameters()]
    views = _views()
    with torch.no_grad():
        t = m.teacher_head(m.teacher_backbone(torch.cat([views[0], views[1]])))
    m(views)
    assert torch.equal(m.center, torch.zeros(32))  # not before the step is known to be good
    m.after_optimizer_step(TrainContext(step=0, total_steps=10, step_ok=torch.tensor(False)))
    assert torch.equal(m.center, torch.zeros(32))
    assert all(torch.equal(a, b) for a, b in zip(m.teacher_head.parameters(), teacher_before))
    m(views)
    m.after_optimizer_step(TrainContext(step=0, total_steps=10, step_ok=torch.tensor(True)))
    torch.testing.assert_close(m.center, 0.1 * t.double().mean(0).float(), rtol=1e-4,
                               atol=1e-6)
    for p, t0, s0 in zip(m.teacher_head.parameters(), teacher_before, student):
        torch.testing.assert_close(p, 0.9 * t0 + 0.1 * s0)


def test_momentum_follows_the_cosine_from_base_to_one():
    m = _method(momentum=0.9)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.5)
    before = [p.clone() for p in m.teacher_backbone.parameters()]
    online = [p.clone() for p in m.backbone.parameters()]
    mom = 1 - (1 - 0.9) * (math.cos(math.pi * 30 / 100) + 1) / 2
    assert momentum_at(30, 100, 0.9, "cosine") == pytest.approx(mom, rel=1e-12)
    m.after_optimizer_step(TrainContext(step=30, total_steps=100))
    for p, k0, q0 in zip(m.teacher_backbone.parameters(), before, online):
        torch.testing.assert_close(p, mom * k0 + (1 - mom) * q0)


def test_last_layer_is_frozen_during_the_first_epoch_only():
    m = _method(freeze_last_layer_epochs=1)
    for epoch, frozen in ((0, True), (1, False)):
        m.zero_grad(set_to_none=True)
        m(_views()).loss.backward()
        m.before_optimizer_step(TrainContext(epoch=epoch))
        assert (m.head.last_layer.weight_v.grad is None) == frozen
        assert m.head.mlp[0].weight.grad is not None  # the rest of the head trains


def test_teacher_temperature_follows_the_epoch_of_the_context():
    m = _method(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    assert m(_views(), TrainContext(epoch=2)).metrics["teacher_temp"] == pytest.approx(0.06)
    assert m(_views(), TrainContext(epoch=5)).metrics["teacher_temp"] == pytest.approx(0.07)
    assert m(_views()).metrics["teacher_temp"] == 0.04  # no trainer: epoch 0


def test_steps_run_reach_every_parameter_and_resume_exactly():
    m = _method(freeze_last_layer_epochs=0)
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters()], lr=1e-3)
    ctx = TrainContext(total_steps=6)
    for step in range(3):
        ctx.step = step
        out = m(_views(seed=step))
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        for name, p in m.trainable_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        m.after_optimizer_step(ctx)
    assert m.center.abs().sum() > 0
    fresh = _method(freeze_last_layer_epochs=0)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.center, m.center)
    torch.manual_seed(7)
    a = m(_views(seed=9)).loss
    torch.manual_seed(7)
    b = fresh(_views(seed=9)).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_wrong_number_of_crops():
    m = _method()
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ConfigError, match="at least 2 global crops"):
        m(Views.from_crops([x]))
