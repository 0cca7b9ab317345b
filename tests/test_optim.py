from __future__ import annotations

import math

import torch
from torch import nn

from ssl_zoo.optim import LARS, build_optimizer, param_groups, warmup_cosine


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
