"""Projection heads shared by the methods: the MLP head and a weight-normalised last layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
             batch_norm: bool = True, last_batch_norm: bool = False,
             activation: str = "relu", last_bias: bool | None = None) -> nn.Sequential:
    """MLP projection head: (Linear, BN, activation) x (num_layers - 1), then Linear [, BN].

    num_layers=2 is the SimCLR / MoCo v2 / SwAV head (SwAV Sec. 4, official `projection_head`);
    ``activation="gelu"`` and ``last_bias=True`` give the MLP of DINO's head (Caron et al. 2021,
    Sec. 3.1 and App.). ``last_bias``: whether the last Linear has a bias; None (the default)
    keeps the historical rule, a bias exactly when there is no last batch norm. Hidden Linears
    have a bias only without batch norm (BN's shift makes one redundant).
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(ACTIVATIONS[activation]())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm if last_bias is None
                            else last_bias))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation (Salimans & Kingma 2016):
    ``W = g * V / ||V||`` row by row, so output unit j is ``g_j <v_j / ||v_j||, x>``.

    DINO's head ends in this layer (official ``DINOHead.last_layer``: ``weight_norm`` of a
    bias-free Linear, g filled with 1 and, with ``norm_last_layer``, not trained). Here
    ``learn_norm=False`` (the default) makes ``weight_g`` a frozen parameter fixed at 1, so every
    row of W is a unit vector; the direction ``weight_v`` is trained. Unlike
    :class:`~ssl_zoo.modules.prototypes.Prototypes`, nothing is re-normalised in place: the norm
    is part of the forward pass, so the gradient of V is projected (orthogonal to v_j).
    ``weight_v`` starts as ``nn.Linear``'s default initialisation, as in the official code.
    Freezing (DINO keeps it fixed during the first epoch) is done by the owner dropping the
    gradients (:meth:`drop_grad_`).
    """

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be >= 1, got {in_dim}, {out_dim}")
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_norm)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``g * V / ||V||`` (rows), shape (out_dim, in_dim)."""
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def drop_grad_(self) -> None:
        """Forget both parameters' gradients, so the next optimiser step leaves the layer as it
        is (a None gradient: no weight decay, no momentum, no Adam step either)."""
        self.weight_v.grad = None
        self.weight_g.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        out_dim, in_dim = self.weight_v.shape
        return f"in_dim={in_dim}, out_dim={out_dim}, learn_norm={self.weight_g.requires_grad}"
