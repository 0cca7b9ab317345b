"""Optimisers and learning-rate schedules used by the trainer.

Every update is multi-tensor (``torch._foreach_*`` or PyTorch's fused kernels), and every
optimiser built here can skip a step on the device: set ``optimizer.found_inf`` to a 0-d float
tensor (1: skip) before ``step()``, as ``torch.amp.GradScaler`` does for fused optimisers. The
host never reads it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MomentumSGD(torch.optim.Optimizer):
    """SGD with momentum (no dampening, coupled weight decay: torch's ``SGD``), and, in groups
    with ``lars_adapt``, layer-wise adaptive rate scaling (LARS, You et al. 2017).

    Ours rather than torch's fused SGD: that one leaves the momentum buffers of a skipped first
    step uninitialised and cannot take parameters whose gradients appear later (SwAV's frozen
    prototypes).

    The LARC rule of the official SwAV code (apex ``LARC``, ``clip=False``): for a parameter p
    with gradient g and both norms non-zero, ``local_lr = eta |p| / (|g| + wd |p| + eps)`` and
    ``g <- local_lr (g + wd p)``; otherwise g is left as it is; then momentum SGD without
    dampening at the global rate. Groups with ``lars_adapt=False`` (batch norm and biases when
    they are excluded) get plain momentum SGD with their own weight decay. One multi-tensor
    pass per group, not a loop of kernels per parameter.
    """

    lars_adapt_default = False

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                        lars_adapt=self.lars_adapt_default)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            wd, eta, mom, lr = (group["weight_decay"], group["eta"], group["momentum"],
                                group["lr"])
            grads = [p.grad for p in params]
            keep = None
            if found_inf is not None:  # a skipped step: zero gradients (NaN-safe), no decay
                ok = found_inf.reshape(()) == 0
                keep = ok.to(params[0].dtype)
                grads = [torch.where(ok, g, 0.0) for g in grads]
            if group["lars_adapt"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                adapt = (p_norm > 0) & (g_norm > 0)
                local = torch.where(adapt, eta * p_norm / (g_norm + wd * p_norm + group["eps"]),
                                    1.0)
                if keep is not None:
                    local = local * keep
                # d_p = a g + b p with a = local lr, b = wd * local lr where adapted, else a=1, b=0
                d_p = torch._foreach_mul(grads, list(local.unbind()))
                torch._foreach_add_(d_p, torch._foreach_mul(
                    params, list(torch.where(adapt, wd * local, 0.0).unbind())))
            else:
                d_p = torch._foreach_add(grads, params, alpha=wd) if wd else list(grads)
                if keep is not None:
                    torch._foreach_mul_(d_p, keep)
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            if keep is None:
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, d_p)
                torch._foreach_add_(params, bufs, alpha=-lr)
            else:  # a skipped step leaves the buffers (momentum 1, nothing added) and weights
                torch._foreach_mul_(bufs, torch.where(ok, mom, 1.0).to(params[0].dtype))
                torch._foreach_add_(bufs, d_p)
                torch._foreach_add_(params, torch._foreach_mul(bufs, keep * -lr))
        return loss


class LARS(MomentumSGD):
    """:class:`MomentumSGD` whose groups adapt their rate by default (LARS / LARC)."""

    lars_adapt_default = True


NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token", "mask_token",
                            "absolute_pos_embed", "relative_position_bias_table"})
"""Transformer parameters without weight decay, by their last name component: the position
embeddings and the extra tokens timm's ``no_weight_decay()`` lists (ViT, DeiT; Swin's tables)."""


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights and all biases (1-d tensors), position embeddings and class (and other
    extra) tokens of ViTs: the parameters DeiT, DINO and timm keep out of weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name.rpartition(".")[2] in NO_DECAY_NAMES


def lr_scale_of(name: str, lr_scale: dict[str, float] | None) -> float:
    """The learning-rate multiplier of parameter ``name``: the value of the first prefix of
    ``lr_scale`` it starts with, else 1 (``train.lr_scale``)."""
    for prefix, scale in (lr_scale or {}).items():
        if name.startswith(prefix):
            return float(scale)
    return 1.0


def param_groups(named_params, weight_decay: float, exclude_norm_and_bias: bool = True,
                 lr_scale: dict[str, float] | None = None) -> list[dict]:
    """Decayed and LARS-adapted weights, and, with ``exclude_norm_and_bias``, a second group of
    norm/bias (and ViT position-embedding and token) parameters without decay or adaptation
    (SimCLR, BYOL, DINO). Without it every parameter is decayed and adapted (the official SwAV
    code's LARC). ``apply_weight_decay`` marks the group :func:`set_weight_decay` schedules.
    With ``lr_scale`` (prefix -> multiplier) each of these is split further by multiplier, and
    every group carries its ``lr_scale`` (:func:`set_lr` multiplies the scheduled rate by it)."""
    split: dict[tuple[bool, float], list] = {}
    for name, p in named_params:
        no_decay = exclude_norm_and_bias and is_no_decay(name, p)
        split.setdefault((no_decay, lr_scale_of(name, lr_scale)), []).append(p)
    groups = []
    for (no_decay, scale), params in sorted(split.items(), key=lambda kv: kv[0]):
        groups.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                       "lars_adapt": not no_decay, "apply_weight_decay": not no_decay,
                       "lr_scale": scale})
    if not groups:
        groups.append({"params": [], "weight_decay": weight_decay, "lars_adapt": True,
                       "apply_weight_decay": True, "lr_scale": 1.0})
    return groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr`` times its ``lr_scale`` (1 when it has none)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def weight_decay_at(step: int, total_steps: int, start: float, end: float | None) -> float:
    """Weight decay at iteration ``step``: constant ``start`` (``end`` None), else a cosine
    from ``start`` at step 0 to ``end`` on the last iteration (``total_steps - 1``): DINO's
    schedule (its ``cosine_scheduler`` for ``weight_decay`` -> ``weight_decay_end``, no
    warm-up), ending exactly on the last step as our learning-rate cosine does."""
    if end is None or total_steps <= 1:
        return start
    t = min(1.0, max(0.0, step / (total_steps - 1)))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set the weight decay of every decayed group (a host float, like the learning rate: no
    device work); groups without decay keep 0. Groups of optimisers loaded from a checkpoint
    written before groups were marked are decayed when their decay is non-zero."""
    for g in optimizer.param_groups:
        if g.get("apply_weight_decay", g["weight_decay"] > 0):
            g["weight_decay"] = value


def clip_gradients(params, max_norm: float) -> torch.Tensor | None:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``, multi-tensor on CUDA); returns the norm before
    clipping as a 0-d device tensor (never read here: no sync), or None when ``max_norm`` is 0
    (off). With fp16 AMP call it after ``GradScaler.unscale_``. A non-finite norm (a step the
    optimiser skips) leaves non-finite gradients, which the skip ignores.

    DINO clips each parameter's gradient by its own norm (``utils.clip_gradients``); this is
    the global norm of timm's, DeiT's and MAE's training scripts.
    """
    if not max_norm:
        return None
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return None
    foreach = True if grads[0].grad.device.type == "cuda" else None
    return torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=foreach)


def build_optimizer(name: str, named_params, lr: float, weight_decay: float, momentum: float,
                    lars_eta: float, exclude_norm_and_bias: bool = True,
                    lr_scale: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The optimiser ``name`` (sgd, lars, adam, adamw) over BN/bias-aware parameter groups
    (split by ``lr_scale`` prefixes, :func:`param_groups`); SGD and LARS are
    :class:`MomentumSGD` (multi-tensor), Adam and AdamW PyTorch's fused ones (one kernel for
    all parameters)."""
    groups = param_groups(named_params, weight_decay, exclude_norm_and_bias, lr_scale)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "sgd":
        for g in groups:
            g["lars_adapt"] = False
        return MomentumSGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for g in groups:
        g.pop("lars_adapt")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float,
                  final_lr: float = 0.0, start_lr: float = 0.0) -> float:
    """Learning rate at iteration ``step``: linear warm-up, then cosine to ``final_lr``.

    Warm-up reaches ``peak_lr`` at iteration ``warmup_steps - 1``: from ``start_lr`` at
    iteration 0 (the official SwAV schedule, ``np.linspace(start_warmup, base_lr, W)``), or,
    with ``start_lr`` 0, from ``peak_lr / warmup_steps`` (no iteration at rate 0). The cosine
    then ends at ``final_lr`` on the last iteration (``total_steps - 1``), as the official one.
    """
    if warmup_steps > 0 and step < warmup_steps:
        if start_lr > 0:
            frac = step / (warmup_steps - 1) if warmup_steps > 1 else 1.0
            return start_lr + (peak_lr - start_lr) * frac
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1 + math.cos(math.pi * t))


def step_decay(step: int, steps_per_epoch: int, warmup_steps: int, peak_lr: float,
               decay_epochs: list[int], gamma: float, start_lr: float = 0.0) -> float:
    """Learning rate at iteration ``step`` of a step schedule: the warm-up of
    :func:`warmup_cosine`, then ``peak_lr`` times ``gamma`` once for each epoch of
    ``decay_epochs`` that has begun (the epoch of a step is ``step // steps_per_epoch``): torch's
    ``MultiStepLR(milestones=decay_epochs, gamma=gamma)`` stepped once per epoch, as the
    official SwAV ``eval_semisup.py`` (20 epochs, decays at 12 and 16, gamma 0.2)."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_cosine(step, warmup_steps + 1, warmup_steps, peak_lr, peak_lr, start_lr)
    epoch = step // max(1, steps_per_epoch)
    return peak_lr * gamma ** sum(1 for e in decay_epochs if epoch >= e)
