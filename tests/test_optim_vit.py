"""What ViT training needs from the optimiser side: parameter groups (checked against timm's
own grouping), the weight-decay schedule, and gradient clipping by the global norm (checked
against a float64 computation, and read back by nobody: no host sync)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train_sync import SyncCounter

from ssl_zoo.backbones import build_backbone
from ssl_zoo.optim import (
    build_optimizer,
    clip_gradients,
    param_groups,
    set_weight_decay,
    weight_decay_at,
)

timm = pytest.importorskip("timm")
from timm.optim import param_groups_weight_decay  # noqa: E402

TINY = {"patch_size": 4, "img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2}


def test_vit_groups_equal_timms_no_weight_decay_groups():
    net, _ = build_backbone("timm:vit_tiny_patch16_224", args=TINY)
    ours = param_groups(net.named_parameters(), 0.05)
    ref = param_groups_weight_decay(net, 0.05, no_weight_decay_list=net.no_weight_decay())
    ref_no = {id(p) for g in ref if g["weight_decay"] == 0 for p in g["params"]}
    ref_yes = {id(p) for g in ref if g["weight_decay"] > 0 for p in g["params"]}
    assert {id(p) for p in ours[0]["params"]} == ref_yes
    assert {id(p) for p in ours[1]["params"]} == ref_no
    assert id(net.pos_embed) in ref_no and id(net.cls_token) in ref_no  # the 3-d ones
    assert ours[0]["apply_weight_decay"] and not ours[1]["apply_weight_decay"]
    everything = param_groups(net.named_parameters(), 0.05, exclude_norm_and_bias=False)
    assert len(everything) == 1 and len(everything[0]["params"]) == len(list(net.parameters()))


def test_weight_decay_schedule_is_a_cosine_from_start_to_end():
    total = 101
    got = np.array([weight_decay_at(s, total, 0.04, 0.4) for s in range(total)])
    ref = 0.4 + (0.04 - 0.4) * (1 + np.cos(np.linspace(0, np.pi, total))) / 2
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got[0] == pytest.approx(0.04) and got[-1] == pytest.approx(0.4)
    assert got[50] == pytest.approx(0.22)
    assert weight_decay_at(7, total, 0.05, None) == 0.05  # null end: constant


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5000), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_weight_decay_stays_between_its_ends_and_is_monotone(total, frac, a, b):
    step = int(frac * (total - 1))
    lo, hi = min(a, b), max(a, b)
    w = weight_decay_at(step, total, a, b)
    assert lo - 1e-12 <= w <= hi + 1e-12
    if step + 1 < total:
        nxt = weight_decay_at(step + 1, total, a, b)
        assert (nxt - w) * (b - a) >= -1e-15


@pytest.mark.parametrize("name", ["adamw", "lars", "sgd"])
def test_set_weight_decay_changes_the_decayed_group_only(name):
    net, _ = build_backbone("timm:vit_tiny_patch16_224", args=TINY)
    opt = build_optimizer(name, net.named_parameters(), 0.1, 0.04, 0.9, 0.001)
    set_weight_decay(opt, 0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    # a checkpoint written before groups were marked: decided by the decay it holds
    for g in opt.param_groups:
        del g["apply_weight_decay"]
    set_weight_decay(opt, 0.2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


def _with_grads(seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g))
              for shape in [(5, 3), (7,), (2, 2, 2), (4,)]]
    for p in params[:3]:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params  # the last one has no gradient (SwAV's frozen prototypes)


@pytest.mark.parametrize("scale, max_norm", [(10.0, 1.0), (0.01, 1.0), (1.0, 3.0)])
def test_clip_scales_all_gradients_by_their_global_norm(scale, max_norm):
    params = _with_grads(0, scale)
    grads64 = [p.grad.double().clone() for p in params[:3]]
    norm64 = math.sqrt(sum(float((g ** 2).sum()) for g in grads64))
    coef = min(1.0, max_norm / (norm64 + 1e-6))
    norm = clip_gradients(params, max_norm)
    assert isinstance(norm, torch.Tensor) and norm.ndim == 0
    assert float(norm) == pytest.approx(norm64, rel=1e-5)
    for p, g in zip(params, grads64):
        torch.testing.assert_close(p.grad.double(), g * coef, rtol=1e-5, atol=1e-7)
    assert params[3].grad is None
    after = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params[:3]))
    assert after <= max_norm * (1 + 1e-5)


def test_clip_off_and_without_gradients_does_nothing():
    params = _with_grads(1, 10.0)
    before = [p.grad.clone() for p in params[:3]]
    assert clip_gradients(params, 0.0) is None
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    assert clip_gradients([torch.nn.Parameter(torch.ones(2))], 1.0) is None


def test_clip_reads_nothing_back():
    params = _with_grads(2, 10.0)
    with SyncCounter() as counter:
        clip_gradients(params, 1.0)
    assert counter.found == []
