"""Momentum (exponential moving average) encoders: MoCo (He et al. 2020, Sec. 3.2, Eq. 2).

``momentum_copy`` makes the key encoder, ``ema_update_`` moves it towards the online encoder
after each optimiser step, and ``momentum_at`` gives the momentum of a step, either constant or
increased to 1 along a half cosine (BYOL, Grill et al. 2020, Sec. 3.2; MoCo v3, Chen et al. 2021).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

MOMENTUM_SCHEDULES = ("constant", "cosine")


def momentum_problem(momentum: float, schedule: str, hint: str) -> str | None:
    """What is wrong with an EMA rate at step 0 and its schedule (None: nothing): the rate in
    [0, 1) and a schedule of :data:`MOMENTUM_SCHEDULES`; ``hint`` names the usual values."""
    if not 0 <= momentum < 1:
        return f"momentum must be in [0, 1), got {momentum} ({hint})"
    if schedule not in MOMENTUM_SCHEDULES:
        return (f"momentum_schedule must be one of {', '.join(MOMENTUM_SCHEDULES)}, "
                f"got {schedule!r}")
    return None


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters are frozen (``requires_grad=False``).

    The copy starts equal to the online module (MoCo initialises the key encoder as a copy of the
    query encoder); it is never seen by the optimiser and only moves through :func:`ema_update_`.
    """
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float,
                apply: torch.Tensor | None = None) -> None:
    """In place ``p_k = m p_k + (1 - m) p_q`` for every parameter pair (MoCo Eq. 2).

    Only parameters move; buffers such as batch-norm running statistics stay the target's own,
    accumulated from its own forward passes, as in the MoCo reference implementation.
    ``apply`` (a 0-d bool tensor on the device): where False, nothing moves (the momentum is
    taken as 1 on the device, so the host never reads it).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    tp, op = list(target.parameters()), list(online.parameters())
    if len(tp) != len(op):
        raise ValueError("target and online modules have different numbers of parameters")
    for pk, pq in zip(tp, op):
        if pk.shape != pq.shape:
            raise ValueError(f"parameter shapes differ: {tuple(pk.shape)} vs {tuple(pq.shape)}")
    if momentum == 1.0:
        return
    online_values = [p.detach().to(t.dtype) for p, t in zip(op, tp)]
    if apply is None:
        torch._foreach_mul_(tp, momentum)
        torch._foreach_add_(tp, online_values, alpha=1.0 - momentum)
        return
    m = torch.where(apply, momentum, 1.0).to(device=tp[0].device, dtype=tp[0].dtype)
    torch._foreach_mul_(tp, m)
    torch._foreach_add_(tp, torch._foreach_mul(online_values, 1.0 - m))


def momentum_at(step: int, total_steps: int, base_momentum: float, schedule: str = "constant",
                final_momentum: float = 1.0) -> float:
    """The EMA momentum to use after optimiser step ``step`` (0-based) of ``total_steps``.

    ``constant``: always ``base_momentum``. ``cosine``: ``final - (final - base) (cos(pi s / T) +
    1) / 2``, rising from ``base_momentum`` at step 0 to ``final_momentum`` at step
    ``total_steps`` (BYOL Sec. 3.2, where final is 1).
    """
    if schedule == "constant":
        return float(base_momentum)
    if schedule != "cosine":
        raise ValueError(f"unknown momentum schedule {schedule!r}; use one of {MOMENTUM_SCHEDULES}")
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return float(final_momentum - (final_momentum - base_momentum)
                 * (math.cos(math.pi * progress) + 1) / 2)
