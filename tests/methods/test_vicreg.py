"""VICReg: the loss against loops in float64 and against lightly; properties; a few steps, end
to end through the trainer, resume from a state_dict."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightly.loss import VICRegLoss

from ssl_zoo.assemble import resolve
from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.train import Trainer
from ssl_zoo_methods.vicreg import (
    VICReg,
    VICRegConfig,
    covariance_term,
    invariance_term,
    variance_term,
    vicreg_loss,
)

METHOD_FILE = Path(__file__).resolve().parents[2] / "methods" / "vicreg.py"


def slow_vicreg(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4
                ) -> tuple[float, float, float, float]:
    """Eq. 1-6 with Python floats, in the official code's conventions: s = mean over images and
    dimensions of (z - z')^2; v(z) = mean_j max(0, gamma - sqrt(Var_j + eps)) with the variance
    over N - 1, averaged over the two branches; c(z) = sum_{i != j} Cov_ij^2 / D, Cov over
    N - 1, summed over the two branches."""
    a, b = z_a.double().tolist(), z_b.double().tolist()
    n, d = len(a), len(a[0])
    s = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def v_and_c(z):
        means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        cov = [[sum((z[k][i] - means[i]) * (z[k][j] - means[j]) for k in range(n)) / (n - 1)
                for j in range(d)] for i in range(d)]
        v = sum(max(0.0, gamma - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    (va, ca), (vb, cb) = v_and_c(a), v_and_c(b)
    v, c = (va + vb) / 2, ca + cb
    return lam * s + mu * v + nu * c, s, v, c


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 5), seed=st.integers(0, 2**16),
       weights=st.tuples(st.floats(0, 30), st.floats(0, 30), st.floats(0, 3)),
       spread=st.floats(0.1, 3.0))
def test_loss_matches_loops(n, d, seed, weights, spread):
    g = torch.Generator().manual_seed(seed)
    z_a = spread * torch.randn(n, d, generator=g)
    z_b = spread * torch.randn(n, d, generator=g)
    loss, terms = vicreg_loss(z_a.double(), z_b.double(), *weights)
    want = slow_vicreg(z_a, z_b, *weights)
    got = (loss, terms["invariance"], terms["variance"], terms["covariance"])
    for value, expected in zip(got, want):
        assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 5.0, 0.5)])
@pytest.mark.parametrize("shape", [(16, 8), (64, 32)])
def test_loss_matches_lightly(weights, shape):
    """lightly follows the official code: the same conventions, the same quantity."""
    torch.manual_seed(1)
    z_a, z_b = 0.5 * torch.randn(*shape), torch.randn(*shape) + 1
    ours = vicreg_loss(z_a, z_b, *weights)[0]
    lam, mu, nu = weights
    theirs = VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu)(z_a, z_b)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_invariance_is_zero_for_equal_views_and_a_shared_permutation_changes_nothing(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_b = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert invariance_term(z_a, z_a).item() == 0.0
    base = vicreg_loss(z_a, z_b)
    perm = torch.randperm(d, generator=g)
    permuted = vicreg_loss(z_a[:, perm], z_b[:, perm])
    torch.testing.assert_close(permuted[0], base[0])
    # a shift shared by both views changes nothing (differences and centred statistics)
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    moved = vicreg_loss(z_a + shift, z_b + shift)
    torch.testing.assert_close(moved[0], base[0])


def test_variance_hinge_and_covariance_on_known_batches():
    # every dimension with standard deviation >= 1: no variance penalty
    wide = torch.tensor([[2.0, -3.0], [-2.0, 3.0], [2.0, 3.0], [-2.0, -3.0]], dtype=torch.float64)
    assert variance_term(wide, eps=0.0).item() == 0.0
    # a constant batch: std sqrt(eps) in every dimension
    flat = torch.ones(5, 3, dtype=torch.float64)
    assert variance_term(flat).item() == pytest.approx(1 - math.sqrt(1e-4))
    # uncorrelated columns (the +-1 patterns of a Hadamard matrix): no covariance penalty;
    # two equal columns: Cov_01 = Cov_10 = var = 4/3, so c = 2 (4/3)^2 / 2
    assert covariance_term(wide).item() == pytest.approx(0.0, abs=1e-15)
    same = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert covariance_term(same).item() == pytest.approx((4 / 3) ** 2)


def test_gather_flag_is_a_no_op_in_one_process():
    torch.manual_seed(4)
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(vicreg_loss(z_a, z_b, gather_distributed=True),
                               vicreg_loss(z_a, z_b))


def test_loss_is_float32_under_bfloat16_autocast():
    torch.manual_seed(5)
    z_a, z_b = torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vicreg_loss(z_a, z_b)[0]
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, vicreg_loss(z_a.float(), z_b.float())[0])


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _tiny_views(x: torch.Tensor, noise: float = 0.1, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [x + noise * torch.randn(x.shape, generator=g) for _ in range(2)]
    return Views.from_crops(crops, torch.arange(len(x)))


def _small(**kw) -> VICRegConfig:
    return VICRegConfig(expander_hidden_dim=64, expander_dim=32, **kw)


def test_config_validation():
    VICRegConfig().validate(32, 128, 1000)
    with pytest.raises(ConfigError, match="variance_weight"):
        VICRegConfig(variance_weight=-1).validate(32, 128, 1000)
    with pytest.raises(ConfigError, match="at least 2 images"):
        VICRegConfig().validate(32, 1, 1000)
    with pytest.raises(ConfigError, match="std_target"):
        VICRegConfig(std_target=0).validate(32, 128, 1000)


def test_default_views_are_byols_asymmetric_pair():
    small = VICReg.default_views(VICRegConfig(), 32)
    assert [(g.count, g.size) for g in small.groups] == [(1, 32), (1, 32)]
    assert [(g.blur_p, g.solarize_p) for g in small.groups] == [(0.0, 0.0), (0.0, 0.2)]
    big = VICReg.default_views(VICRegConfig(), 224)
    assert [(g.blur_p, g.solarize_p) for g in big.groups] == [(1.0, 0.0), (0.1, 0.2)]
    VICReg.check_views(VICRegConfig(), big)
    big.groups[1].size = 96
    with pytest.raises(ConfigError, match="exactly 2 crops of one size"):
        VICReg.check_views(VICRegConfig(), big)


def test_expander_is_three_layers_without_a_last_bias():
    net = ConvNet(width=0.25)
    method = VICReg(net, net.out_dim, _small())
    linears = [m for m in method.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(net.out_dim, 64), (64, 64),
                                                                  (64, 32)]
    assert linears[-1].bias is None


def test_steps_reduce_loss_and_reach_every_parameter():
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    method = VICReg(net, net.out_dim, _small())
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
    assert {"invariance", "variance", "covariance", "embedding_std"} <= set(out.metrics)


def test_resume_from_state_dict_continues_exactly():
    torch.manual_seed(0)
    views = _tiny_views(torch.randn(8, 3, 16, 16))

    def build():
        net = ConvNet(width=0.25)
        m = VICReg(net, net.out_dim, _small())
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
    run = resolve({}, [f"method={METHOD_FILE}:VICReg", "dataset=demo", "backbone=convnet",
                       "image_size=16", "train.batch_size=32", "train.epochs=1",
                       "train.max_steps=3", "train.log_every_iters=1", "eval.enabled=false",
                       "method.expander_hidden_dim=64", "method.expander_dim=32"])
    trainer = Trainer(run, tmp_path / "run", show_progress=False)
    trainer.fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert trainer.step == 3 and len(lines) == 3 and '"covariance"' in lines[-1]
