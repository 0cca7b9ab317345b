"""Optimisers and learning-rate schedules used by the trainer."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    Follows the LARC form used by the official SwAV code (apex ``LARC``, ``clip=False``): for a
    parameter p with gradient g, ``local_lr = eta * |p| / (|g| + weight_decay * |p|)``, then
    ``g <- local_lr * (g + weight_decay * p)`` and a momentum SGD step with the global rate.
    Groups with ``lars_adapt=False`` (batch norm, biases) get plain momentum SGD without decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                        lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            wd, eta, mom = group["weight_decay"], group["eta"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars_adapt"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    local_lr = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        eta * p_norm / (g_norm + wd * p_norm + group["eps"]),
                        torch.ones_like(p_norm),
                    )
                    g = (g + wd * p) * local_lr
                elif wd:
                    g = g + wd * p
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(mom).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Batch-norm weights and all biases (1-d tensors) get no weight decay or LARS adaptation."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(named_params, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and BN/bias parameters without decay or adaptation."""
    decay, no_decay = [], []
    for name, p in named_params:
        (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_adapt": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def build_optimizer(name: str, named_params, lr: float, weight_decay: float, momentum: float,
                    lars_eta: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (sgd, lars, adam, adamw) over BN/bias-aware parameter groups."""
    groups = param_groups(named_params, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    for g in groups:
        g.pop("lars_adapt")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float,
                  final_lr: float = 0.0) -> float:
    """Learning rate at iteration ``step``: linear warm-up from 0, then cosine to ``final_lr``.

    Warm-up reaches ``peak_lr`` at iteration ``warmup_steps``; the cosine then ends at
    ``final_lr`` on the last iteration (``total_steps - 1``), as in the SwAV official schedule.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1 + math.cos(math.pi * t))
