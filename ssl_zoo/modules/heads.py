"""Projection heads shared by the methods."""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
             batch_norm: bool = True, last_batch_norm: bool = False) -> nn.Sequential:
    """MLP projection head: (Linear, BN, ReLU) x (num_layers - 1), then Linear [, BN].

    num_layers=2 is the SimCLR / MoCo v2 / SwAV head (SwAV Sec. 4, official `projection_head`).
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    layers: list[nn.Module] = []
    dim = in_dim
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
