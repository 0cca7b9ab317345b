"""Host-side state saved with a module's ``state_dict``, in one place (docs/design.md, "State").

A training step must never read a value back from the device, so the counters the host uses to
decide what a step does (a queue's write position and fill, SwAV's iteration and epoch, PCL's
clustering epoch) are plain Python ints. :func:`host_counters` gives a module such ints and puts
them in its ``state_dict`` as 0-d int64 tensors under their own names, and sets them from a
loaded ``state_dict``: a checkpoint resumes them exactly, and nothing on the device has to be
kept in step with them. :func:`sized_by_checkpoint` lets a buffer whose size depends on the data
(PCL's per-image assignments) take the size of the checkpoint it loads.

Both work through ``nn.Module``'s public state-dict hooks rather than ``get_extra_state``: the
counters keep the keys they had as buffers (``queues.0.ptr``, ``iteration``), so checkpoints
written before this module existed load unchanged, and a checkpoint still reads as plain named
tensors.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


def host_counters(module: nn.Module, **initial: int) -> None:
    """Give ``module`` the Python int attributes ``initial`` (name=value), saved in its
    ``state_dict`` as 0-d int64 tensors named like the attributes and set back by
    ``load_state_dict`` (a missing one is reported and left as it was, as a buffer would be)."""
    for name, value in initial.items():
        if hasattr(module, name):
            raise ValueError(f"{type(module).__name__} already has an attribute {name!r}")
        setattr(module, name, int(value))
    names = tuple(initial)
    module.register_state_dict_post_hook(functools.partial(_save_counters, names=names))
    module.register_load_state_dict_pre_hook(functools.partial(_load_counters, names=names))


def _save_counters(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                   local_metadata: dict, *, names: tuple[str, ...]) -> None:
    for name in names:
        state_dict[prefix + name] = torch.tensor(getattr(module, name), dtype=torch.long)


def _load_counters(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                   local_metadata: dict, strict: bool, missing_keys: list[str],
                   unexpected_keys: list[str], error_msgs: list[str], *,
                   names: tuple[str, ...]) -> None:
    # Taken out of the (copied) state_dict here, so nn.Module does not count them unexpected.
    for name in names:
        key = prefix + name
        if key not in state_dict:  # as for a missing buffer: reported, the value left as it was
            missing_keys.append(key)
            continue
        value = state_dict.pop(key)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            error_msgs.append(f"{key}: expected one integer, got {value!r}")
            continue
        setattr(module, name, int(value))  # at load time, never inside a step


def sized_by_checkpoint(module: nn.Module, *names: str) -> None:
    """Let the buffers ``names`` of ``module`` take the shape of the tensor a ``state_dict``
    brings (their dtype and device stay), instead of failing on a size mismatch."""
    module.register_load_state_dict_pre_hook(functools.partial(_resize_buffers, names=names))


def _resize_buffers(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                    local_metadata: dict, strict: bool, missing_keys: list[str],
                    unexpected_keys: list[str], error_msgs: list[str], *,
                    names: tuple[str, ...]) -> None:
    for name in names:
        incoming = state_dict.get(prefix + name)
        current = getattr(module, name)
        if isinstance(incoming, torch.Tensor) and incoming.shape != current.shape:
            setattr(module, name, torch.empty(incoming.shape, dtype=current.dtype,
                                              device=current.device))
