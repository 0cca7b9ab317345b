"""Barlow Twins: the loss against loops in float64 and against lightly; properties; a few steps,
end to end through the trainer, resume from a state_dict."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightly.loss import BarlowTwinsLoss

from ssl_zoo.assemble import resolve
from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.optim import LARS, param_groups
from ssl_zoo.train import Trainer
from ssl_zoo_methods.barlowtwins import (
    BarlowTwins,
    BarlowTwinsConfig,
    barlow_twins_loss,
    cross_correlation,
)

METHOD_FILE = Path(__file__).resolve().parents[2] / "methods" / "barlowtwins.py"


def slow_barlow_twins(z_a, z_b, lambd: float, eps: float = 1e-5) -> tuple[float, float, float]:
    """Eq. 1-2 with Python floats: standardise every column (mean, biased variance + eps), then
    C_ij = sum_n a_ni b_nj / N, then sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2."""
    def columns(z):
        rows = z.double().tolist()
        n, d = len(rows), len(rows[0])
        out = []
        for j in range(d):
            col = [rows[i][j] for i in range(n)]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            out.append([(x - mean) / math.sqrt(var + eps) for x in col])
        return out

    a, b = columns(z_a), columns(z_b)
    n, d = len(a[0]), len(a)
    on = off = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            if i == j:
                on += (1 - c) ** 2
            else:
                off += c ** 2
    return on + lambd * off, on, off


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 5), lambd=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_loss_matches_loops(n, d, lambd, seed):
    g = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    loss, on, off = barlow_twins_loss(z_a.double(), z_b.double(), lambd)
    want = slow_barlow_twins(z_a, z_b, lambd)
    for got, expected in zip((loss, on, off), want):
        assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("lambd", [0.0051, 0.1])
@pytest.mark.parametrize("shape", [(16, 8), (64, 32)])
def test_loss_matches_lightly(lambd, shape):
    """lightly standardises with F.batch_norm (biased variance, eps 1e-5), as the official
    BatchNorm1d and ours: the same quantity, unscaled."""
    torch.manual_seed(1)
    z_a, z_b = torch.randn(*shape), 3 * torch.randn(*shape) + 1
    ours = barlow_twins_loss(z_a, z_b, lambd)[0]
    theirs = BarlowTwinsLoss(lambda_param=lambd)(z_a, z_b)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _hadamard_columns(n: int) -> torch.Tensor:
    """n x (n - 1) with entries +-1, every column of mean 0 and variance 1, columns orthogonal:
    a Sylvester-Hadamard matrix without its all-ones column (n a power of 2)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:]


@pytest.mark.parametrize("n", [4, 8, 16])
def test_identical_standardised_views_with_identity_correlation_give_zero(n):
    z = _hadamard_columns(n)
    torch.testing.assert_close(cross_correlation(z, z, eps=0.0),
                               torch.eye(n - 1, dtype=torch.float64))
    loss, on, off = barlow_twins_loss(z, z, 0.0051, eps=0.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    # with batch norm's eps the diagonal is 1 / (1 + eps): nearly zero, not exactly
    assert barlow_twins_loss(z, z, 0.0051)[0].item() == pytest.approx(
        (n - 1) * (1e-5 / (1 + 1e-5)) ** 2, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_shared_permutation_of_dimensions_and_per_dimension_scaling_change_nothing(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_b = torch.randn(n, d, generator=g, dtype=torch.float64)
    base = barlow_twins_loss(z_a, z_b, 0.0051, eps=0.0)[0]
    perm = torch.randperm(d, generator=g)
    permuted = barlow_twins_loss(z_a[:, perm], z_b[:, perm], 0.0051, eps=0.0)[0]
    torch.testing.assert_close(permuted, base)
    # standardisation removes any positive scale and shift per dimension, view by view
    scale = torch.rand(d, generator=g, dtype=torch.float64) * 5 + 0.1
    shift = torch.randn(d, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(barlow_twins_loss(z_a * scale + shift, z_b, 0.0051, eps=0.0)[0],
                               base)


def test_agreeing_views_score_lower_than_random_ones():
    torch.manual_seed(3)
    z = torch.randn(64, 16)
    agreeing = barlow_twins_loss(z, z + 0.05 * torch.randn_like(z), 0.0051)[0]
    random = barlow_twins_loss(z, torch.randn_like(z), 0.0051)[0]
    assert agreeing < 0.1 * random


def test_gather_flag_is_a_no_op_in_one_process():
    torch.manual_seed(4)
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(barlow_twins_loss(z_a, z_b, gather_distributed=True),
                               barlow_twins_loss(z_a, z_b))


def test_loss_is_float32_under_bfloat16_autocast():
    torch.manual_seed(5)
    z_a, z_b = torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = barlow_twins_loss(z_a, z_b)[0]
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, barlow_twins_loss(z_a.float(), z_b.float())[0])


def test_loss_scale_with_scaled_decay_equals_a_lower_rate_for_biases_under_lars():
    """The ImageNet recipe's claim: with LARS (biases and norms neither decayed nor adapted),
    a loss scaled by s and a weight decay scaled by s make the same updates as the unscaled
    loss with the biases' learning rate multiplied by s (the official 0.0048 against 0.2)."""
    torch.manual_seed(6)
    s, wd, lr = 0.024, 1.5e-6, 1.6
    model = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False), torch.nn.BatchNorm1d(5),
                                torch.nn.ReLU(), torch.nn.Linear(5, 3, bias=False)).double()
    x = torch.randn(16, 6, dtype=torch.float64)

    def train(loss_scale, decay, bias_lr_ratio):
        m = copy.deepcopy(model)
        opt = LARS(param_groups(m.named_parameters(), decay), lr=lr, eta=0.001)
        for _ in range(3):
            opt.param_groups[1]["lr"] = lr * bias_lr_ratio
            loss = barlow_twins_loss(m(x[:8]), m(x[8:]), 0.0051)[0] * loss_scale
            opt.zero_grad()
            loss.backward()
            opt.step()
        return m

    scaled, two_rates = train(s, wd * s, 1.0), train(1.0, wd, s)
    for (name, a), b, before in zip(scaled.named_parameters(), two_rates.parameters(),
                                    model.parameters()):
        moved = (b - before).abs().max().item()
        assert moved > 1e-5, name  # every parameter moved (the BN bias through the ReLU)
        # equal up to LARS's eps (1e-8, added to the gradient norm, which the scale shrinks)
        assert (a - b).abs().max().item() <= 1e-6 * moved, name


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _tiny_views(x: torch.Tensor, noise: float = 0.1, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [x + noise * torch.randn(x.shape, generator=g) for _ in range(2)]
    return Views.from_crops(crops, torch.arange(len(x)))


def test_config_validation():
    BarlowTwinsConfig().validate(32, 128, 1000)
    with pytest.raises(ConfigError, match="lambda_offdiag"):
        BarlowTwinsConfig(lambda_offdiag=-1).validate(32, 128, 1000)
    with pytest.raises(ConfigError, match="at least 2 images"):
        BarlowTwinsConfig().validate(32, 1, 1000)
    with pytest.raises(ConfigError, match="loss_scale"):
        BarlowTwinsConfig(loss_scale=0).validate(32, 128, 1000)


def test_default_views_are_byols_asymmetric_pair():
    small = BarlowTwins.default_views(BarlowTwinsConfig(), 32)
    assert [(g.count, g.size) for g in small.groups] == [(1, 32), (1, 32)]
    assert [(g.blur_p, g.solarize_p) for g in small.groups] == [(0.0, 0.0), (0.0, 0.2)]
    big = BarlowTwins.default_views(BarlowTwinsConfig(), 224)
    assert [(g.blur_p, g.solarize_p) for g in big.groups] == [(1.0, 0.0), (0.1, 0.2)]
    g = big.groups[0]
    assert (g.scale, g.brightness, g.contrast, g.saturation, g.hue) == ((0.08, 1.0), 0.4, 0.4,
                                                                       0.2, 0.1)
    BarlowTwins.check_views(BarlowTwinsConfig(), big)
    three = BarlowTwins.default_views(BarlowTwinsConfig(), 32)
    three.groups[1].count = 2
    with pytest.raises(ConfigError, match="exactly 2 crops"):
        BarlowTwins.check_views(BarlowTwinsConfig(), three)


def test_projector_is_three_layers_without_a_last_bias():
    net = ConvNet(width=0.25)
    method = BarlowTwins(net, net.out_dim, BarlowTwinsConfig(proj_hidden_dim=32, proj_dim=24))
    linears = [m for m in method.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(net.out_dim, 32), (32, 32),
                                                                  (32, 24)]
    assert linears[-1].bias is None
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in method.head) == 2


def test_steps_reduce_loss_and_reach_every_parameter():
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    method = BarlowTwins(net, net.out_dim, BarlowTwinsConfig(proj_hidden_dim=64, proj_dim=32))
    views = _tiny_views(torch.randn(16, 3, 16, 16))
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
    assert {"invariance", "redundancy", "pos_cosine"} <= set(out.metrics)
    # the loss scale multiplies the loss and nothing else
    scaled = BarlowTwins(net, net.out_dim, BarlowTwinsConfig(proj_hidden_dim=64, proj_dim=32,
                                                             loss_scale=0.5))
    scaled.load_state_dict(method.state_dict())
    torch.testing.assert_close(scaled(views).loss, 0.5 * method(views).loss)


def test_resume_from_state_dict_continues_exactly():
    torch.manual_seed(0)
    views = _tiny_views(torch.randn(8, 3, 16, 16))

    def build():
        net = ConvNet(width=0.25)
        m = BarlowTwins(net, net.out_dim, BarlowTwinsConfig(proj_hidden_dim=32, proj_dim=16))
        return m, torch.optim.Adam(m.parameters(), lr=1e-3)

    def step(m, opt):
        loss = m(views).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    a, opt_a = build()
    for _ in range(2):
        step(a, opt_a)
    b, opt_b = build()
    b.load_state_dict(a.state_dict())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as through a checkpoint file
    for _ in range(2):
        assert torch.equal(step(a, opt_a), step(b, opt_b))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_trains_end_to_end_on_demo_data(tmp_path):
    run = resolve({}, [f"method={METHOD_FILE}:BarlowTwins", "dataset=demo",
                       "backbone=convnet", "image_size=16", "train.batch_size=32",
                       "train.epochs=1", "train.max_steps=3", "train.log_every_iters=1",
                       "eval.enabled=false", "method.proj_hidden_dim=64", "method.proj_dim=32"])
    trainer = Trainer(run, tmp_path / "run", show_progress=False)
    trainer.fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert trainer.step == 3 and len(lines) == 3 and '"invariance"' in lines[-1]
