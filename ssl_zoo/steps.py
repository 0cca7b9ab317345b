"""The pieces the trainer is built from that know nothing of its loop (docs/design.md, "Data
flow"): the method placed on its device (and wrapped for DDP), the loaders, mixed precision,
``torch.compile``, the copy of the next batch while this one computes, the log step's one
transfer to the host, the progress bar, and profiler labels for the step's phases.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from numbers import Number
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.profiler import record_function

from ssl_zoo.config import TrainConfig
from ssl_zoo.data.loader import BatchLoader, WorkerViews
from ssl_zoo.data.views import Views, ViewSpec, eval_view
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method
from ssl_zoo.modules import distributed as D
from ssl_zoo.nonfinite import jsonable

PHASES = ("zoo:views", "zoo:forward", "zoo:nonfinite", "zoo:backward", "zoo:hooks",
          "zoo:optimizer")
"""The labels of one training step's phases (``zoo:hooks`` also covers the schedule)."""


def _no_label(_name: str) -> AbstractContextManager:
    return contextlib.nullcontext()


def phase_labels() -> Callable[[str], AbstractContextManager]:
    """``record_function`` while a profiler runs, else a no-op: the step's phase labels cost
    one check per step when nobody profiles."""
    return record_function if torch.autograd._profiler_enabled() else _no_label


def join_process_group(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on
    CUDA) when there are several processes; returns (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # torchrun keeps its store across elastic restarts (--max-restarts): the keys of each
        # attempt get their own prefix, or a restarted rank reads the dead ranks' addresses
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                store=dist.PrefixStore(f"ssl_zoo/attempt_{attempt}/", store),
                                rank=rank, world_size=world_size)
    return D.get_rank(), D.get_world_size()


def shutdown_distributed() -> None:
    """Destroy this process's process group, if the trainer made one (at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def views_in_workers(setting: str, device: torch.device, dataset, num_workers: int) -> bool:
    """``train.views_in`` resolved: auto means the workers for a CPU run that reads a folder or
    prepared store with workers (there the crops would otherwise wait in the step for one
    process's threads while the workers idle), the step otherwise (on a GPU the crops cost a
    few percent of the step and the uint8 batch is ~15x smaller to send)."""
    if setting != "auto":
        return setting == "workers"
    return device.type == "cpu" and bool(getattr(dataset, "lazy", False)) and num_workers > 0


def decode_device(setting: str, device: torch.device, dataset) -> torch.device | None:
    """``train.decode`` resolved: the device that decodes the training images, or None for
    the loader workers; a one-line error for a source that has no files to decode."""
    if setting != "device":
        return None
    if not hasattr(dataset, "fetch_encoded"):
        raise ConfigError(f"train.decode=device decodes image files: {dataset.name} is not an "
                          "image folder (use folder:PATH, or train.decode=workers)")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` resolved: the autocast dtype, or None for float32 (always on the CPU:
    mixed precision is a CUDA feature here)."""
    if mode == "off" or device.type != "cuda":
        return None
    return torch.float16 if mode == "fp16" else torch.bfloat16  # auto and bf16


def compile_modules(method: Method) -> None:
    """``torch.compile`` the backbone and every other child module with parameters (heads,
    prototypes, momentum encoders) in place, so parameter and checkpoint names do not change."""
    for module in method.children():
        if any(True for _ in module.parameters()):
            module.compile()


def prefetch(batches, device: torch.device):
    """The loader's (images, index, sizes) batches (sizes may be None); on CUDA the next batch
    is copied (from pinned memory, on a side stream) while the current step computes."""
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def copy(batch):  # images or the crops made by the loader's workers (Views), index, sizes
        with torch.cuda.stream(stream):
            return tuple(x.to(device, non_blocking=True) if x is not None else None
                         for x in batch)

    def mark_used(batch):  # the side stream's tensors are now used on the current stream
        for x in batch:
            for tensor in (x.groups if isinstance(x, Views) else [x]):
                if tensor is not None:
                    tensor.record_stream(torch.cuda.current_stream(device))

    it = iter(batches)
    nxt = next(it, None)
    pending = copy(nxt) if nxt is not None else None
    while pending is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        mark_used(pending)
        current = pending
        nxt = next(it, None)
        pending = copy(nxt) if nxt is not None else None
        yield current


def rss_mb() -> float:
    """Peak resident memory of this process in MiB (CPU runs)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # pragma: no cover - non-Unix
        return float("nan")


def place_method(method: Method, t: TrainConfig, device: torch.device, world_size: int
                 ) -> tuple[Method, nn.Module, bool]:
    """The method on its device (CUDA backend flags, channels-last, compile) and the module the
    step calls forward on: the method itself, or its DDP wrapper when there are several
    processes. Returns (method, model, channels_last); ``method`` is a new object only when
    ``train.sync_bn`` converts its batch norms."""
    method.to(device)
    channels_last = device.type == "cuda" and t.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if t.compile:
        compile_modules(method)
    if world_size == 1:
        return method, method, channels_last
    if t.sync_bn:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(
            method, process_group=D.sync_bn_process_group(t.sync_bn_group_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # per-rank state (SwAV queues) stays per rank
        )
    return method, model, channels_last


def train_loader(dataset, t: TrainConfig, device: torch.device, rank: int, world_size: int,
                 view_spec: ViewSpec) -> tuple[BatchLoader, torch.device | None, bool]:
    """This rank's training batches, decoded and cropped where the config says: (loader,
    the decoding device or None for the workers, whether the workers make the crops)."""
    decode_on = decode_device(t.decode, device, dataset)
    in_workers = decode_on is None and views_in_workers(t.views_in, device, dataset,
                                                        t.num_workers)
    loader = BatchLoader(
        dataset, t.batch_size, shuffle=True, drop_last=True, seed=t.seed, rank=rank,
        world_size=world_size, num_workers=t.num_workers, pin_memory=device.type == "cuda",
        views=WorkerViews(view_spec, t.seed, rank) if in_workers else None,
        decode_on=decode_on,
    )
    return loader, decode_on, in_workers


def eval_view_batches(dataset, batch_size: int, num_workers: int, rank: int, world_size: int,
                      device: torch.device, image_size: int, view_spec: ViewSpec):
    """(normalised eval views, dataset index) over this rank's share of ``dataset``."""
    loader = BatchLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank,
                         world_size=world_size, num_workers=num_workers)
    try:
        for images, index, sizes in loader.iterate():
            images = images.to(device, non_blocking=True)
            sizes = sizes.to(device) if sizes is not None else None
            yield (eval_view(images, image_size, view_spec.mean, view_spec.std, sizes=sizes),
                   index.to(device))
    finally:
        loader.close()


def read_to_host(loss: torch.Tensor, metrics: dict[str, Any], extra: list[torch.Tensor],
                 averaged: torch.Tensor | None = None
                 ) -> tuple[float, dict[str, Any], list[float], list[float]]:
    """The loss and the metrics, averaged over ranks, ``extra`` device scalars (this rank's)
    and ``averaged`` (a vector averaged over ranks too), brought to the host in one transfer
    after one all-reduce (the log step's only read of the device). Every metric that is a number
    or a one-element tensor is a mean over ranks, counts included (SwAV's ``prototypes_used``
    is then the ranks' mean count); anything else is this rank's, as it is. Returns (loss,
    metrics, extra, averaged)."""
    tensors = [k for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    numbers = [k for k, v in metrics.items()
               if isinstance(v, Number) and not isinstance(v, complex)]
    # float64, so host numbers come back as they went (the loss and float32 metrics exactly)
    shared = [loss.detach().double().reshape(1),
              *(metrics[k].detach().double().reshape(1).to(loss.device) for k in tensors)]
    if numbers:  # host numbers join the one all-reduce (a small copy, on log steps only)
        shared.append(torch.tensor([float(metrics[k]) for k in numbers], dtype=torch.float64,
                                   device=loss.device))
    if averaged is not None:
        shared.append(averaged.double().reshape(-1))
    shared = D.all_reduce_mean(torch.cat(shared))
    values = torch.cat([shared, *(x.double().reshape(1) for x in extra)]).tolist()
    reduced = dict(zip([*tensors, *numbers], values[1:1 + len(tensors) + len(numbers)]))
    host = {k: reduced[k] if k in reduced else jsonable(v) for k, v in metrics.items()}
    first_avg = 1 + len(tensors) + len(numbers)
    n_avg = len(shared) - first_avg
    return values[0], host, values[len(shared):], values[first_avg:first_avg + n_avg]


class EpochBar:
    """The progress bar's line of the current epoch, or nothing when no bar is shown."""

    def __init__(self, progress=None):
        self.progress, self.task = progress, None

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, description: str, total: int, completed: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(description, total=total, completed=completed,
                                               loss=float("nan"), lr=0.0, ips=0.0)

    def update(self, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task, **fields)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)


# ---- the parts of one step --------------------------------------------------------------------
def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision in ``dtype``, or nothing (float32) when it is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def finite_on_every_rank(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                         world_size: int) -> torch.Tensor:
    """A device bool, the same on every rank: whether every rank's loss is finite. A False one
    makes the optimiser skip the update (its ``found_inf``, as GradScaler sets it); no host
    read."""
    bad = (~torch.isfinite(loss.detach())).to(torch.float32)
    if world_size > 1:  # every rank skips if any rank's loss is non-finite
        bad = D.all_reduce_sum(bad.clone())
    ok = bad == 0
    optimizer.found_inf = (~ok).to(torch.float32)
    return ok


def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Gradients of ``loss``; with an fp16 loss scaler, scaled and then unscaled in place."""
    if scaler:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler) -> None:
    """The update (through the loss scaler in fp16), then the gradients cleared."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
