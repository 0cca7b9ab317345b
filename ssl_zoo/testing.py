"""Conformance checks for a method class: the ones ssl-zoo's own methods pass, for a plug-in's
own tests (docs/design.md, "The plug-in contract")::

    from ssl_zoo.testing import check_method
    from my_pkg.module import MyMethod

    def test_my_method_conforms():
        check_method(MyMethod)

Each check raises ``AssertionError`` with what differed, and runs on tiny data it makes itself
(64 random 16-px images, a small ConvNet, a few steps on the CPU), so a plug-in's test suite
stays fast:

- :func:`check_sync_free_step`: no operation that makes the device wait for the host
  (``.item()``, ``nonzero``, boolean masks, ...) inside a steady-state training step;
- :func:`check_two_ranks_equal_one`: 2 gloo processes with half the batch each give the loss
  and the update of 1 process with the whole batch;
- :func:`check_exact_resume`: a run killed with SIGKILL mid-run and resumed ends bit-identical
  to an uninterrupted one;
- :func:`check_method`: all three.

:func:`float32_noise` says whether a setting of the distributed check tests logic or float
rounding (large steps amplify rounding; a failed check reports it).

The method class must be importable by its module path (defined at module level in a module on
``sys.path``, or loaded from a file with ``--method file.py:Class``): the distributed and resume
checks rebuild it in other processes. ``config`` (the method's ``Config`` instance) and ``sets``
(``--set`` assignments such as ``"method.queue_length=32"``) choose small settings.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_zoo import registry
from ssl_zoo.assemble import resolve
from ssl_zoo.data.views import Views
from ssl_zoo.method import Method, MethodConfig, TrainContext
from ssl_zoo.train import Trainer
from ssl_zoo.typed import from_dict, to_dict

__all__ = [
    "SyncCounter", "TinyNet", "check_exact_resume", "check_method", "check_sync_free_step",
    "check_two_ranks_equal_one", "compare_one_vs_two", "method_spec", "run_on_ranks",
    "sync_ops_per_step", "tiny_dataset",
]

TINY_SIZE = 16
"""Side of the images :func:`tiny_dataset` makes, in pixels."""


# --------------------------------------------------------------------------------------------
# tiny data and the method's name in another process
# --------------------------------------------------------------------------------------------
def tiny_dataset(directory: str | Path, n_train: int = 64, n_test: int = 32,
                 size: int = TINY_SIZE, classes: int = 4, seed: int = 0) -> Path:
    """An ``npz`` source of random images (``--dataset npz:PATH``): ``n_train`` training and
    ``n_test`` test images of ``size`` px, labels cycling through ``classes``."""
    rng = np.random.default_rng(seed)
    path = Path(directory) / f"tiny_{n_train}_{n_test}_{size}_{seed}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x_train=rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
                 y_train=np.arange(n_train) % classes,
                 x_test=rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
                 y_test=np.arange(n_test) % classes)
    return path


def method_spec(method_cls: type[Method]) -> str:
    """What ``--method`` resolves to ``method_cls`` in another process: ``module:QualName``,
    or ``file.py:Class`` for a class loaded from a file."""
    if not (isinstance(method_cls, type) and issubclass(method_cls, Method)):
        raise TypeError(f"{method_cls!r} is not a subclass of ssl_zoo.Method")
    module = sys.modules.get(method_cls.__module__)
    if method_cls.__module__.startswith("ssl_zoo_user_") and getattr(module, "__file__", None):
        return f"{module.__file__}:{method_cls.__name__}"
    spec = f"{method_cls.__module__}:{method_cls.__qualname__}"
    found: Any = importlib.import_module(method_cls.__module__)
    for part in method_cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not method_cls:
        raise AssertionError(f"{method_cls.__qualname__} cannot be imported as {spec}; define "
                             "the method class at module level so other processes can load it")
    return spec


def _config_sets(config: MethodConfig | None) -> list[str]:
    """``--set method.K=V`` for every field of a method config (values as JSON)."""
    if config is None:
        return []
    return [f"method.{k}={json.dumps(v)}" for k, v in to_dict(config).items()]


def _base_sets(method_cls: type[Method], data: Path, batch_size: int) -> list[str]:
    return [f"method={method_spec(method_cls)}", f"dataset=npz:{data}",
            "backbone=convnet_w0.25", f"train.batch_size={batch_size}", "train.num_workers=0",
            "eval.enabled=false", "train.warmup_epochs=0"]


@contextlib.contextmanager
def _directory(directory: str | Path | None) -> Iterator[Path]:
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_check_") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------------------------
# 1. no host sync in a steady-state step
# --------------------------------------------------------------------------------------------
ALWAYS_SYNC = {
    "aten::_local_scalar_dense",  # .item(), int(t), float(t), bool(t)
    "aten::nonzero", "aten::nonzero_static", "aten::argwhere",
    "aten::unique", "aten::_unique", "aten::_unique2", "aten::unique_dim",
    "aten::unique_consecutive", "aten::masked_select", "aten::bincount", "aten::histc",
    "aten::equal", "aten::is_nonzero", "aten::allclose",
    "aten::lift_fresh",  # torch.tensor(python data): a host-to-device copy on a GPU
}


def sync_reason(func, args, kwargs) -> str | None:
    """Why this ATen operation would make a GPU wait for the host, or None."""
    name = func._schema.name
    if name in ALWAYS_SYNC:
        return name
    if name == "aten::repeat_interleave" and isinstance(args[0], torch.Tensor) \
            and len(args) < 3 and "output_size" not in kwargs:
        if func.__name__.startswith("repeat_interleave.Tensor") or args[0].dtype == torch.long:
            return name + " without output_size"
    if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            return name + " with a boolean mask"
    if name == "aten::masked_scatter" or name == "aten::masked_scatter_":
        return name
    return None


class SyncCounter(TorchDispatchMode):
    """Records every operation that would synchronise a GPU stream with the host (counted on
    any device: the CPU runs the same operations)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        if reason:
            self.found.append(reason)
        return func(*args, **kwargs)


def sync_ops_per_step(trainer: Trainer, cuda_error_after: int | None = None
                      ) -> list[list[str]]:
    """Train ``trainer`` to the end; the synchronising operations of each of its steps (the
    real ``_train_step``: views, forward, loss, backward, hooks, optimiser). On CUDA, steps
    after the first ``cuda_error_after`` also run under ``torch.cuda.set_sync_debug_mode
    ("error")``."""
    per_step: list[list[str]] = []
    step = trainer._train_step

    def counted(images, index, sizes=None):
        strict = (cuda_error_after is not None and trainer.device.type == "cuda"
                  and len(per_step) >= cuda_error_after)
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with SyncCounter() as counter:
                result = step(images, index, sizes)
        except RuntimeError as exc:
            if strict and "synchroniz" in str(exc):  # CUDA's own detector
                raise AssertionError(f"step {len(per_step)}: {exc}") from None
            raise
        finally:
            if strict:
                torch.cuda.set_sync_debug_mode("default")
        per_step.append(counter.found)
        return result

    trainer._train_step = counted
    trainer.fit()
    return per_step


def check_sync_free_step(method_cls: type[Method], config: MethodConfig | None = None, *,
                         sets: Sequence[str] = (), steps: int = 6, warmup_steps: int = 2,
                         batch_size: int = 16, device: str = "cpu",
                         directory: str | Path | None = None) -> list[list[str]]:
    """No device-to-host synchronisation in the steps after the first ``warmup_steps`` (those
    create optimiser state and cached constants) of a ``steps``-step run on tiny data (the last
    step is a log step: its metrics are computed, and read after the step). Returns the
    operations found per step (all steady ones empty)."""
    with _directory(directory) as tmp:
        data = tiny_dataset(tmp / "data")
        run = resolve({}, [*_base_sets(method_cls, data, batch_size), *_config_sets(config),
                           f"train.device={device}", f"train.max_steps={steps}",
                           "train.epochs=1000", "train.log_every_iters=100000", *sets])
        trainer = Trainer(run, tmp / "sync-run", show_progress=False)
        per_step = sync_ops_per_step(trainer, cuda_error_after=warmup_steps)
    assert len(per_step) == steps, f"{method_cls.__name__}: ran {len(per_step)} of {steps} steps"
    steady = per_step[warmup_steps:]
    found = {i + warmup_steps: ops for i, ops in enumerate(steady) if ops}
    assert not found, (f"{method_cls.__name__}: operations that wait for the host in "
                       f"steady-state steps (step: ops): {found}; keep metrics as device "
                       "tensors, apply masks with torch.where, keep host counters as ints")
    return per_step


# --------------------------------------------------------------------------------------------
# 2. two ranks = one process
# --------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """A BN-free backbone: conv, ReLU, global pool, 24-d."""

    feature_dim = 24

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def strip_batch_norm(module: nn.Module) -> nn.Module:
    """Batch norms replaced by Identity (in place): torch's SyncBatchNorm needs CUDA, so on the
    CPU what two ranks are compared on is exactly the cross-rank logic."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            strip_batch_norm(child)
    return module


def make_inputs(batch: int, sizes: Sequence[tuple[int, int]], seed: int = 0
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fixed crops: per group (count, size) a (count, batch, 3, s, s) tensor, plus indices."""
    g = torch.Generator().manual_seed(seed)
    groups = [torch.randn(count, batch, 3, s, s, generator=g) for count, s in sizes]
    return groups, torch.arange(batch)


def local_views(groups: list[torch.Tensor], index: torch.Tensor, rank: int, world: int
                ) -> Views:
    """This rank's consecutive share of every group's images."""
    b = groups[0].shape[1] // world
    part = [g[:, rank * b:(rank + 1) * b].reshape(-1, *g.shape[2:]) for g in groups]
    return Views(part, [g.shape[0] for g in groups], index[rank * b:(rank + 1) * b])


def run_steps(build: Callable[[], Method], groups, index, rank: int, world: int, steps: int
              ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``steps`` optimiser steps (SGD) on this rank's share, every hook called as the trainer
    calls it (each step also starts an "epoch", so epoch hooks run); returns (losses averaged
    over ranks, state_dict)."""
    torch.manual_seed(0)
    method = strip_batch_norm(build())
    model = method
    if world > 1:
        model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    n = groups[0].shape[1]

    def eval_batches(batch_size=None):
        # this rank's share of the "dataset" (the first crop of every image)
        per = n // world
        idx = index[rank * per:(rank + 1) * per]
        yield groups[0][0][rank * per:(rank + 1) * per], idx

    ctx = TrainContext(epoch=0, step=0, steps_per_epoch=steps, total_steps=steps * 4,
                       rank=rank, world_size=world, dataset_size=n, eval_batches=eval_batches)
    method.on_train_start(ctx)
    losses = []
    for step in range(steps):
        ctx.step = step
        ctx.epoch = step
        method.on_epoch_start(ctx)
        out = model(local_views(groups, index, rank, world), ctx)
        out.loss.backward()
        method.before_optimizer_step(ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_optimizer_step(ctx)
        loss = out.loss.detach().clone()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        losses.append(float(loss))
    return losses, {k: v.detach().clone() for k, v in method.state_dict().items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable, *args, world: int = 2) -> list[Any]:
    """``fn(rank, world, *args)`` in ``world`` gloo processes of this machine; their results
    (tensors, numbers, lists and dicts of them), in rank order. ``fn`` must be importable (a
    module-level function)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, free_port(), fn, args, tmp), nprocs=world)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _steps_on_rank(rank: int, world: int, build, groups, index, steps: int):
    losses, state = run_steps(build, groups, index, rank, world, steps)
    return {"losses": losses, "state": state}


def compare_one_vs_two(build: Callable[[], Method], groups, index, steps: int = 2):
    """(single-process (losses, state), [rank 0, rank 1] results) for the same global batch."""
    single = run_steps(build, groups, index, 0, 1, steps)
    return single, run_on_ranks(_steps_on_rank, build, groups, index, steps)


def _build(spec: str, config: dict[str, Any]) -> Method:
    """The method ``spec`` names (:func:`method_spec`) on a :class:`TinyNet`, with the config
    fields ``config``: what another process can rebuild from plain data, whatever module (or
    file) the class comes from."""
    cls = registry.get_method(spec)
    return cls(TinyNet(), TinyNet.feature_dim, from_dict(cls.Config, config, "method"))


def _tolerance_used(got: dict[str, torch.Tensor], exact: dict[str, torch.Tensor], rtol: float,
                   atol: float) -> tuple[float, str]:
    """(largest ``|got - exact| / (atol + rtol |exact|)`` over the floating entries, its key):
    the share of :func:`torch.testing.assert_close`'s tolerance used (above 1 fails)."""
    worst = (0.0, "")
    for key, value in exact.items():
        if value.is_floating_point():
            used = ((got[key].double() - value.double()).abs()
                    / (atol + rtol * value.double().abs())).max().item()
            worst = max(worst, (used, key))
    return worst


def float32_noise(method_cls: type[Method], config: MethodConfig | None = None, *,
                  sizes: Sequence[tuple[int, int]] | None = None, batch: int = 8,
                  steps: int = 3, rtol: float = 1e-4, atol: float = 1e-5) -> tuple[float, str]:
    """How much of :func:`check_two_ranks_equal_one`'s tolerance float32 rounding alone uses
    in the same setting: one process's state after ``steps`` steps in float32 against the
    same steps in float64, as (share of the tolerance, worst state entry). Two ranks sum in
    another order than one process, so they can differ by about this much with no logic
    difference; a setting where it is near 1 (large steps that amplify rounding) tests float
    noise, not the method: take smaller steps (a loss scale, fewer steps) there."""
    config = config if config is not None else method_cls.Config()
    sizes = _check_sizes(method_cls, config, sizes)
    groups, index = make_inputs(batch, sizes)
    build = functools.partial(_build, method_spec(method_cls), to_dict(config))
    _, single = run_steps(build, groups, index, 0, 1, steps)
    _, exact = run_steps(lambda: build().double(), [g.double() for g in groups], index, 0, 1,
                         steps)
    return _tolerance_used(single, exact, rtol, atol)


def _check_sizes(method_cls: type[Method], config: MethodConfig,
                 sizes: Sequence[tuple[int, int]] | None) -> Sequence[tuple[int, int]]:
    """``sizes``, or the method's default view spec's (count, size) groups at the kit's size."""
    if sizes is not None:
        return sizes
    spec = method_cls.default_views(config, TINY_SIZE)
    return [(g.count, g.size) for g in spec.groups if g.count]


def check_two_ranks_equal_one(method_cls: type[Method], config: MethodConfig | None = None, *,
                              sizes: Sequence[tuple[int, int]] | None = None, batch: int = 8,
                              steps: int = 3, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """2 gloo processes with ``batch / 2`` images each == 1 process with ``batch``: the losses
    (averaged over ranks) of ``steps`` SGD steps, and every entry of the state_dict after them
    (floating ones within ``rtol`` / ``atol``, others equal). The backbone is :class:`TinyNet`
    (no batch norm); the crops are fixed random tensors, per group ``(count, size)`` of
    ``sizes`` (default: the method's default view spec at 16 px)."""
    config = config if config is not None else method_cls.Config()
    sizes = _check_sizes(method_cls, config, sizes)
    groups, index = make_inputs(batch, sizes)
    build = functools.partial(_build, method_spec(method_cls), to_dict(config))
    (losses, state), ranks = compare_one_vs_two(build, groups, index, steps)
    who = method_cls.__name__
    for r, got in enumerate(ranks):
        close = np.allclose(got["losses"], losses, rtol=10 * rtol, atol=10 * atol)
        assert close, (f"{who}: losses of rank {r} of 2 {got['losses']} != one process's "
                       f"{losses}")
    for key, value in state.items():
        for r, got in enumerate(ranks):
            other = got["state"][key]
            if value.dtype.is_floating_point:
                try:
                    torch.testing.assert_close(other, value, rtol=rtol, atol=atol)
                except AssertionError as exc:
                    hint = _noise_hint(method_cls, config, sizes, batch, steps, rtol, atol)
                    raise AssertionError(f"{who}: {key} after {steps} steps differs between "
                                         f"rank {r} of 2 and one process: {exc}{hint}") from None
            else:
                assert torch.equal(other, value), (
                    f"{who}: {key} after {steps} steps differs between rank {r} of 2 and one "
                    "process")


def _noise_hint(method_cls, config, sizes, batch, steps, rtol, atol) -> str:
    """For a failed comparison: whether float32 rounding alone already exceeds the tolerance
    in this setting (then the failure may be noise, not logic), or "" if it cannot tell."""
    try:
        used, key = float32_noise(method_cls, config, sizes=sizes, batch=batch, steps=steps,
                                  rtol=rtol, atol=atol)
    except Exception:  # a method that cannot run in float64: no hint
        return ""
    if used < 0.5:
        return (f"\n(float32 rounding alone uses {used:.2f} of the tolerance here, so this is a "
                "logic difference between ranks, not rounding)")
    return (f"\n(float32 rounding alone, one process against float64, uses {used:.1f}x the "
            f"tolerance on {key} in this setting: the steps amplify rounding, so this may be "
            "summation order, not logic; check with smaller steps, e.g. a loss scale or fewer "
            "steps, until float32_noise() is well under 1)")


# --------------------------------------------------------------------------------------------
# 3. exact resume after SIGKILL
# --------------------------------------------------------------------------------------------
def train_command(method: str, out: Path, extra: Sequence[str]) -> list[str]:
    """``python -m ssl_zoo train`` of ``method`` into ``out``, checkpointing every 4 steps and
    logging every step."""
    return [sys.executable, "-m", "ssl_zoo", "train", "--method", method, "--out", str(out),
            "--no-eval", "--no-progress", "--set", "train.checkpoint_every_iters=4",
            "--set", "train.log_every_iters=1", *extra]


def _child_env() -> dict[str, str]:
    """This process's environment, one thread, and its import path (the method's module)."""
    paths = [p for p in sys.path if p]
    old = os.environ.get("PYTHONPATH")
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([*paths, *([old] if old else [])]))


def logged_records(run: Path) -> list[dict]:
    """A run's metrics.jsonl without the timing fields."""
    return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def kill_at_random_step(cmd: list[str], run: Path, low: int, high: int,
                        env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` and SIGKILL it once its metrics reach a random step in [low, high]. A
    small run can finish between two looks; then it is started again, aiming earlier (at most
    3 tries). Returns the step aimed at."""
    target = random.Random(os.getpid()).randint(low, high)
    env = env or _child_env()
    metrics = run / "metrics.jsonl"
    for _ in range(3):
        shutil.rmtree(run, ignore_errors=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= target:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return target
        err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert proc.returncode == 0, f"the run to kill failed: {err}"
        target = max(low, target // 2)  # it finished before the kill: aim earlier
    raise AssertionError(f"the run finished before it could be killed, 3 times ({cmd})")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    out = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed: {out.stderr[-2000:]}"


def kill_and_resume_equals_uninterrupted(directory: Path, method: str, extra: Sequence[str],
                                         total_steps: int) -> None:
    """Train ``method`` uninterrupted, and again killed (SIGKILL) at a random step after the
    first checkpoint and resumed with ``--resume``: the final checkpoints (model, optimiser,
    generators) and the logged records must be identical."""
    full, part = directory / "full", directory / "part"
    env = _child_env()
    _run(train_command(method, full, extra), env)
    # from the 5th logged step on, the checkpoint of step 4 exists (it is saved after step 4's
    # log line and before step 5's); killed earlier, there would be nothing to resume
    kill_at_random_step(train_command(method, part, extra), part, 5, total_steps - 2, env)
    # same thread count as the uninterrupted run: float reductions then add up identically
    _run([sys.executable, "-m", "ssl_zoo", "train", "--resume", str(part), "--no-progress"],
         env)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == total_steps, (a["step"], b["step"], total_steps)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), (
            f"{method}: {key} differs between the resumed run and the uninterrupted one")
    for (ka, va), (_, vb) in zip(a["optimizer"]["state"].items(),
                                  b["optimizer"]["state"].items()):
        for name in va:
            assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name])), (
                f"{method}: optimiser state {ka}.{name} differs after the resume")
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]), f"{method}: generator state"
    records_a, records_b = logged_records(full), logged_records(part)
    assert records_a == records_b, (
        f"{method}: logged records differ after the resume: "
        f"{[(x, y) for x, y in zip(records_a, records_b) if x != y][:2]}")


def check_exact_resume(method_cls: type[Method], config: MethodConfig | None = None, *,
                       sets: Sequence[str] = (), epochs: int = 3, batch_size: int = 16,
                       directory: str | Path | None = None) -> None:
    """A CLI run (``python -m ssl_zoo train``, its own process) killed with SIGKILL at a random
    step after its first checkpoint and resumed with ``--resume`` ends bit-identical to an
    uninterrupted run: model, optimiser state, random generators and every logged record.
    Tiny data: 64 images, batch 16, ``epochs`` epochs of 4 steps."""
    assert epochs * 64 // batch_size >= 8, "needs at least 8 steps (a checkpoint every 4)"
    with _directory(directory) as tmp:
        data = tiny_dataset(tmp / "data")
        extra = [a for s in [*_base_sets(method_cls, data, batch_size)[1:],
                             *_config_sets(config), "train.device=cpu",
                             f"train.epochs={epochs}", *sets] for a in ("--set", s)]
        kill_and_resume_equals_uninterrupted(tmp, method_spec(method_cls), extra,
                                             total_steps=epochs * (64 // batch_size))


# --------------------------------------------------------------------------------------------
# all of them
# --------------------------------------------------------------------------------------------
def check_method(method_cls: type[Method], config: MethodConfig | None = None, *,
                 sets: Sequence[str] = (), directory: str | Path | None = None) -> None:
    """:func:`check_sync_free_step`, :func:`check_two_ranks_equal_one` and
    :func:`check_exact_resume` with their small defaults (``config`` for all three, ``sets``
    for the trainer's two)."""
    with _directory(directory) as tmp:
        check_sync_free_step(method_cls, config, sets=sets, directory=tmp / "sync")
        check_two_ranks_equal_one(method_cls, config)
        check_exact_resume(method_cls, config, sets=sets, directory=tmp / "resume")
