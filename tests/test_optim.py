from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_zoo.optim import LARS, build_optimizer, is_no_decay, param_groups, warmup_cosine


def test_lars_step_against_hand_computation():
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad = torch.tensor([[0.6, 0.8]])  # |g| = 1
    b.grad = torch.tensor([0.5])
    lr, wd, eta, mom = 0.1, 0.01, 0.001, 0.9
    opt = LARS(param_groups([("w", w), ("b", b)], wd), lr=lr, momentum=mom, weight_decay=wd,
               eta=eta)
    opt.step()
    local = eta * 5.0 / (1.0 + wd * 5.0)
    g = [(0.6 + wd * 3.0) * local, (0.8 + wd * 4.0) * local]
    expected_w = [3.0 - lr * g[0], 4.0 - lr * g[1]]
    assert torch.allclose(w.detach(), torch.tensor([expected_w]), atol=1e-6)
    # bias: no decay, no adaptation
    assert torch.allclose(b.detach(), torch.tensor([1.0 - lr * 0.5]))
    # second step uses momentum: buf = mom * buf + g_new
    w.grad = torch.tensor([[0.6, 0.8]])
    b.grad = torch.tensor([0.5])
    w_before = w.detach().clone()
    opt.step()
    p_norm = float(w_before.norm())
    local2 = eta * p_norm / (1.0 + wd * p_norm)
    g2 = (torch.tensor([[0.6, 0.8]]) + wd * w_before) * local2
    buf = mom * torch.tensor([g]) + g2
    assert torch.allclose(w.detach(), w_before - lr * buf, atol=1e-6)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - lr * 0.5 - lr * (0.9 * 0.5 + 0.5)]))


def test_bn_and_bias_get_no_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    groups = param_groups(model.named_parameters(), 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_adapt"] is False
    for name in ("sgd", "adam", "adamw", "lars"):
        opt = build_optimizer(name, model.named_parameters(), 0.1, 0.1, 0.9, 0.001)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_warmup_cosine_values():
    peak, final = 1.0, 0.1
    # warm-up: linear, reaches the peak on the last warm-up iteration
    assert warmup_cosine(0, 100, 10, peak, final) == 0.1
    assert warmup_cosine(9, 100, 10, peak, final) == 1.0
    # cosine from the peak at step 10 to the final value at the last step (99)
    assert warmup_cosine(10, 100, 10, peak, final) == 1.0
    mid = 10 + (99 - 10) / 2
    assert math.isclose(warmup_cosine(int(mid), 100, 10, peak, final),
                        final + 0.5 * (peak - final) * (1 + math.cos(math.pi * int(mid - 10) / 89)))
    assert math.isclose(warmup_cosine(99, 100, 10, peak, final), final)
    assert warmup_cosine(0, 10, 0, peak, 0.0) == 1.0


def larc_reference(params, grads, bufs, lr, wd, eta, mom, eps=1e-8, adapt=None):
    """The official SwAV optimiser, one parameter at a time: apex LARC (clip=False) around
    torch SGD(momentum, no dampening), written out in float64 loops."""
    out_p, out_b = [], []
    for i, (p, g, buf) in enumerate(zip(params, grads, bufs)):
        p, g = p.double().clone(), g.double().clone()
        if adapt is None or adapt[i]:
            pn, gn = float(p.norm()), float(g.norm())
            if pn != 0 and gn != 0:
                local = eta * pn / (gn + pn * wd + eps)
                g = (g + wd * p) * local
        elif wd:
            g = g + wd * p
        buf = g.clone() if buf is None else buf * mom + g
        out_p.append(p - lr * buf)
        out_b.append(buf)
    return out_p, out_b


@pytest.mark.parametrize("exclude", [False, True])
def test_lars_matches_a_per_parameter_transcription_of_larc(exclude):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    named = list(model.named_parameters())
    lr, wd, eta, mom = 0.3, 1e-4, 0.001, 0.9
    opt = LARS(param_groups(named, wd, exclude_norm_and_bias=exclude), lr=lr, momentum=mom,
               weight_decay=wd, eta=eta)
    adapt = [not (exclude and is_no_decay(n, p)) for n, p in named]
    decay = [wd if a else 0.0 for a in adapt]
    ref_p = [p.detach().double().clone() for _, p in named]
    ref_b = [None] * len(named)
    for step in range(4):
        grads = [torch.randn_like(p) for _, p in named]
        grads[1] = torch.zeros_like(grads[1]) if step == 1 else grads[1]  # |g| = 0: untouched
        for (_, p), g in zip(named, grads):
            p.grad = g.clone()
        opt.step()
        new = [larc_reference([rp], [g], [rb], lr, d, eta, mom, adapt=[a])
               for rp, g, rb, d, a in zip(ref_p, grads, ref_b, decay, adapt)]
        ref_p = [n[0][0] for n in new]
        ref_b = [n[1][0] for n in new]
        for (name, p), rp in zip(named, ref_p):
            torch.testing.assert_close(p.detach().double(), rp, rtol=1e-5, atol=1e-6,
                                       msg=f"{name} at step {step}")


@pytest.mark.parametrize("name", ["sgd", "lars", "adam", "adamw"])
def test_a_step_marked_found_inf_changes_nothing(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = build_optimizer(name, model.named_parameters(), 0.1, 0.01, 0.9, 0.001)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.found_inf = torch.zeros(())
    opt.step()  # a good step creates the state
    params = [p.detach().clone() for p in model.parameters()]
    state = {(i, k): v.clone() for i, p in enumerate(model.parameters())
             for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.ones(())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params))
    after = {(i, k): v for i, p in enumerate(model.parameters())
             for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    assert state and all(torch.equal(after[k], v) for k, v in state.items())
    for p in model.parameters():  # and the next good step moves again
        p.grad = torch.randn_like(p)
    opt.found_inf = torch.zeros(())
    opt.step()
    assert not torch.equal(next(model.parameters()), params[0])


@pytest.mark.parametrize("name", ["sgd", "lars", "adam", "adamw"])
def test_a_skipped_first_step_then_a_good_one_equals_the_good_one_alone(name):
    """Also when a parameter gets its first gradient later (SwAV's prototypes after freezing)."""
    def run(skip_first: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        opt = build_optimizer(name, model.named_parameters(), 0.1, 0.01, 0.9, 0.001)
        if skip_first:
            for p in model.parameters():
                p.grad = torch.full_like(p, float("nan"))
            opt.found_inf = torch.ones(())
            opt.step()
        g = torch.Generator().manual_seed(1)
        for step in range(2):
            for i, p in enumerate(model.parameters()):
                late = i == 0 and step == 0  # the first weight has no gradient at first
                p.grad = None if late else torch.randn(p.shape, generator=g)
            opt.found_inf = torch.zeros(())
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b)


def test_warmup_from_a_start_lr_is_the_official_linspace():
    """main_swav.py: np.linspace(start_warmup, base_lr, W) over the warm-up iterations, then the
    cosine from base_lr to final_lr over the rest."""
    import numpy as np

    peak, start, final, w, total = 4.8, 0.3, 0.0048, 7, 20
    official = np.concatenate([
        np.linspace(start, peak, w),
        [final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t / (total - w)))
         for t in range(total - w)]])
    ours = [warmup_cosine(s, total, w, peak, final, start_lr=start) for s in range(total)]
    np.testing.assert_allclose(ours[:w], official[:w], rtol=1e-12)
    assert ours[0] == start and ours[w - 1] == pytest.approx(peak)
    assert ours[w] == pytest.approx(peak) and ours[-1] == pytest.approx(final)
    # no start lr: the ramp as before (first step peak / W)
    assert warmup_cosine(0, total, w, peak, final) == pytest.approx(peak / w)
