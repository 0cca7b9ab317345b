"""MLP heads (activation, independent last bias) and the weight-normalised last layer, against
hand-built layers and torch's own weight_norm parametrisation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ssl_zoo.modules.heads import WeightNormLinear, mlp_head


def _old_mlp_head(in_dim, hidden_dim, out_dim, num_layers, batch_norm, last_batch_norm):
    """The head as it was before activations and last_bias existed, built by hand."""
    layers, dim = [], in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("num_layers,batch_norm,last_batch_norm",
                         [(2, True, False), (3, True, True), (1, False, False), (2, False, True)])
def test_defaults_keep_the_old_numerics(num_layers, batch_norm, last_batch_norm):
    torch.manual_seed(0)
    old = _old_mlp_head(6, 10, 4, num_layers, batch_norm, last_batch_norm)
    torch.manual_seed(0)
    new = mlp_head(6, 10, 4, num_layers, batch_norm, last_batch_norm)
    assert [type(m) for m in old] == [type(m) for m in new]
    assert {k: v.shape for k, v in old.state_dict().items()} == \
        {k: v.shape for k, v in new.state_dict().items()}
    x = torch.randn(8, 6)
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)


def test_gelu_and_a_last_bias_with_last_batch_norm():
    torch.manual_seed(1)
    head = mlp_head(5, 7, 3, num_layers=2, batch_norm=False, last_batch_norm=True,
                    activation="gelu", last_bias=True)
    first, act, last, bn = head
    assert isinstance(act, nn.GELU) and last.bias is not None and first.bias is not None
    x = torch.randn(6, 5, dtype=torch.float64)
    head = head.double().train()
    h = x @ first.weight.T + first.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # GELU, exact form
    y = h @ last.weight.T + last.bias
    y = (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(head(x), y)
    no_bias = mlp_head(5, 7, 3, batch_norm=False, last_bias=False)
    assert no_bias[-1].bias is None
    with pytest.raises(ValueError, match="unknown activation"):
        mlp_head(5, 7, 3, activation="tanh")


def _torch_weight_norm(v: torch.Tensor, g: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(v.shape[1], v.shape[0], bias=False).to(v.dtype)
    lin = weight_norm(lin, dim=0)
    with torch.no_grad():
        lin.parametrizations.weight.original0.copy_(g)
        lin.parametrizations.weight.original1.copy_(v)
    return lin


@pytest.mark.parametrize("learn_norm", [False, True])
def test_weight_norm_linear_matches_torch_parametrisation(learn_norm):
    torch.manual_seed(2)
    ours = WeightNormLinear(6, 5, learn_norm=learn_norm).double()
    if learn_norm:
        with torch.no_grad():
            ours.weight_g.copy_(torch.rand(5, 1, dtype=torch.float64) + 0.5)
    theirs = _torch_weight_norm(ours.weight_v.detach().clone(), ours.weight_g.detach().clone())
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    ours(x).pow(2).sum().backward()
    theirs(x).pow(2).sum().backward()
    torch.testing.assert_close(ours.weight_v.grad, theirs.parametrizations.weight.original1.grad)
    if learn_norm:
        torch.testing.assert_close(ours.weight_g.grad,
                                   theirs.parametrizations.weight.original0.grad)
    else:
        assert ours.weight_g.grad is None and not ours.weight_g.requires_grad
        assert torch.equal(ours.weight_g, torch.ones(5, 1, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), seed=st.integers(0, 2**16),
       scale=st.floats(0.01, 100.0))
def test_fixed_norm_rows_are_unit_and_scaling_v_changes_nothing(n_in, n_out, seed, scale):
    g = torch.Generator().manual_seed(seed)
    layer = WeightNormLinear(n_in, n_out).double()
    with torch.no_grad():
        layer.weight_v.copy_(torch.randn(n_out, n_in, generator=g, dtype=torch.float64))
    x = torch.randn(3, n_in, generator=g, dtype=torch.float64)
    rows = layer.weight.norm(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    # hand formula: y_ij = <x_i, v_j> / ||v_j||
    v = layer.weight_v.detach()
    hand = torch.tensor([[sum(float(x[i, k] * v[j, k]) for k in range(n_in))
                          / math.sqrt(sum(float(v[j, k]) ** 2 for k in range(n_in)))
                          for j in range(n_out)] for i in range(3)], dtype=torch.float64)
    before = layer(x)
    torch.testing.assert_close(before, hand)
    with torch.no_grad():
        layer.weight_v.mul_(scale)
    torch.testing.assert_close(layer(x), before)


def test_drop_grad_keeps_the_layer_through_an_adamw_step():
    torch.manual_seed(3)
    layer = WeightNormLinear(4, 3, learn_norm=True)
    before = [p.detach().clone() for p in layer.parameters()]
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    layer(torch.randn(5, 4)).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    layer.drop_grad_()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), before))
    layer(torch.randn(5, 4)).sum().backward()
    opt.step()  # with gradients, it moves
    assert not torch.equal(layer.weight_v, before[0])
