"""The trainer's checks of the plug-in contract (docs/design.md, "The plug-in contract"), each a
one-line :class:`~ssl_zoo.errors.UserError` naming the method and the hook.

They run once per process, on a *dry step* before the first iteration (:func:`dry_step`): one
forward and backward on the first batch with nothing applied (no optimiser step, the method's
buffers and counters put back, the random generators restored), so the step itself stays free of
checks and host reads, and a run is bit-identical with or without them. A distributed run reduces
gradients with ``find_unused_parameters=False``: a parameter that gets no gradient would train
in one process and stop a multi-process run at its second step with PyTorch's reduction error,
so the dry step names such parameters instead.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from numbers import Number
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_zoo.errors import UserError
from ssl_zoo.method import Method, StepOutput, TrainContext
from ssl_zoo.modules import distributed as D


def method_label(method: Method) -> str:
    """How errors name a method: its class and its registered name."""
    cls = type(method).__name__
    return f"{cls} ({method.name})" if method.name and method.name != cls.lower() else cls


def check_forward_signature(method: Method) -> None:
    """``forward`` takes ``(views, ctx)``: the trainer passes its context positionally."""
    try:
        inspect.signature(method.forward).bind(object(), object())
    except TypeError:
        raise UserError(f"{method_label(method)}.forward must accept (views, ctx=None): the "
                        "trainer passes its TrainContext as the second argument") from None
    except ValueError:  # no signature to inspect (a C function): let the call decide
        pass


def _is_metric(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, Number) and not isinstance(value, complex)


def check_step_output(method: Method, out: Any) -> None:
    """What ``forward`` returned is a :class:`StepOutput` with a one-element floating loss that
    back-propagates, metrics that are numbers or one-element tensors, tensors in ``debug``."""
    who = f"{method_label(method)}.forward"
    if not isinstance(out, StepOutput):
        raise UserError(f"{who} returned {type(out).__name__}, not an ssl_zoo.StepOutput "
                        "(return StepOutput(loss, metrics))")
    loss = out.loss
    if not isinstance(loss, torch.Tensor):
        raise UserError(f"{who}: StepOutput.loss is {type(loss).__name__}, not a tensor")
    if loss.numel() != 1:
        raise UserError(f"{who}: StepOutput.loss has shape {tuple(loss.shape)}; it must be a "
                        "scalar (reduce it, e.g. with .mean())")
    if not loss.is_floating_point():
        raise UserError(f"{who}: StepOutput.loss has dtype {loss.dtype}; it must be floating")
    if not loss.requires_grad:
        raise UserError(f"{who}: StepOutput.loss does not require grad (computed under "
                        "torch.no_grad() or detached?)")
    if not isinstance(out.metrics, dict):
        raise UserError(f"{who}: StepOutput.metrics is {type(out.metrics).__name__}, not a "
                        "dict of name -> number")
    for key, value in out.metrics.items():
        if not isinstance(key, str):
            raise UserError(f"{who}: metric name {key!r} is not a string")
        if not _is_metric(value):
            what = (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                    else type(value).__name__)
            raise UserError(f"{who}: metric {key!r} is {what}; a metric is a number or a "
                            "one-element tensor")
    if not isinstance(out.debug, dict) or not all(
            isinstance(v, torch.Tensor) for v in out.debug.values()):
        raise UserError(f"{who}: StepOutput.debug must be a dict of name -> tensor")


def check_eval_networks(method: Method) -> None:
    """``eval_networks()`` is a dict of modules and holds ``default_eval_network``."""
    networks = method.eval_networks()
    if not isinstance(networks, dict) or not all(
            isinstance(k, str) and isinstance(v, nn.Module) for k, v in networks.items()):
        raise UserError(f"{method_label(method)}.eval_networks must return a dict of name -> "
                        f"nn.Module, got {type(networks).__name__}")
    method.eval_network()  # default_eval_network among them, else one line


def parameters_without_gradient(method: nn.Module) -> list[str]:
    """Names of the parameters that require a gradient but got none (after a backward)."""
    return [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]


def _non_parameter_state(method: nn.Module) -> dict[str, Any]:
    """Copies of the method's buffers and host counters (its state_dict minus parameters)."""
    params = {name for name, _ in method.named_parameters()}
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v)
            for k, v in method.state_dict().items() if k not in params}


def _generators() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _restore_generators(state: tuple[Any, ...]) -> None:
    cpu, cuda, py, npy = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)
    np.random.set_state(npy)


def dry_step(method: Method, make_views: Callable[[], Any], ctx: TrainContext,
             autocast: AbstractContextManager, world_size: int = 1) -> None:
    """One forward and backward of ``method`` (the plain module, not a DDP wrapper: no gradient
    is reduced) on ``make_views()``, checking the contract, then everything put back: gradients
    cleared, buffers and host counters restored, the random generators as they were. Every rank
    runs it (forward may hold collectives); under DDP the ranks agree on the missing gradients
    with one all-reduce, so all of them stop with the same error."""
    check_forward_signature(method)
    check_eval_networks(method)
    saved, generators = _non_parameter_state(method), _generators()
    grads = [(p, p.grad) for p in method.parameters()]
    log_step = ctx.log_step
    try:
        for p in method.parameters():
            p.grad = None
        ctx.log_step = True  # every metric the method can log is checked
        views = make_views()
        with autocast:
            out = method(views, ctx)
        check_step_output(method, out)
        out.loss.backward()
        names = [name for name, p in method.named_parameters() if p.requires_grad]
        missing = torch.tensor([float(n in set(parameters_without_gradient(method)))
                                for n in names], device=out.loss.device)
        if world_size > 1:
            missing = D.all_reduce_sum(missing)
        unused = [n for n, m in zip(names, missing.tolist()) if m > 0]
    finally:
        ctx.log_step = log_step
        for p, g in grads:
            p.grad = g
        method.load_state_dict(saved, strict=False)
        _restore_generators(generators)
    if unused:
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8
                                         else "")
        raise UserError(
            f"{method_label(method)}.forward: {len(unused)} trainable parameter(s) get no "
            f"gradient from the loss: {shown}; a multi-process (DDP) run would stop at its "
            "second step. Use them in the loss, or set requires_grad=False (or make them "
            "buffers) for parameters that are not trained")
