"""The trainer: one loop for every method (DESIGN.md, "Data flow").

source -> uint8 batches -> device -> views (batched augmentation) -> ``Method.forward`` -> loss ->
backward -> hooks -> optimiser -> metrics.jsonl, progress bar, atomic checkpoints -> evaluation.

Determinism: every iteration reseeds torch's generators from (seed, iteration, rank), and the
data order depends only on (seed, epoch). A run resumed from any checkpoint therefore replays the
same augmentations and batches as an uninterrupted one, and a seeded CPU run is bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ssl_zoo.assemble import Run, resolve_device
from ssl_zoo.checkpoint import NAMES as CHECKPOINT_NAMES
from ssl_zoo.checkpoint import load_latest_checkpoint, save_checkpoint
from ssl_zoo.config import to_dict
from ssl_zoo.data.loader import BatchLoader, WorkerViews, step_seed
from ssl_zoo.data.views import Views, eval_view, make_views, skip_view_draws
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, TrainContext
from ssl_zoo.modules import distributed as D
from ssl_zoo.nonfinite import NonFiniteGuard, jsonable
from ssl_zoo.optim import build_optimizer, warmup_cosine
from ssl_zoo.report import training_progress
from ssl_zoo.runlog import RunLogger


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    epochs_done: int
    final_loss: float
    images_per_s: float
    wall_s: float
    peak_memory_mb: float
    eval: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# setup helpers
# --------------------------------------------------------------------------------------------
def init_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return D.get_rank(), D.get_world_size(), device


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
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            return None  # mixed precision is a CUDA feature here; CPU runs in float32
        return None
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16  # auto and bf16


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

    it = iter(batches)
    nxt = next(it, None)
    pending = copy(nxt) if nxt is not None else None
    while pending is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        for x in pending:
            for tensor in (x.groups if isinstance(x, Views) else [x]):
                if tensor is not None:
                    tensor.record_stream(torch.cuda.current_stream(device))
        current = pending
        nxt = next(it, None)
        pending = copy(nxt) if nxt is not None else None
        yield current


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Trains an assembled :class:`~ssl_zoo.assemble.Run`, writing into ``run_dir``.

    Evaluation comes in as a callback (``evaluation``: an object with ``periodic(backbone,
    device) -> dict`` and ``final(method, device, step) -> dict``, as
    :class:`ssl_zoo.evaluation.run.RunEvaluation`), so the loop knows nothing of metrics.
    """

    def __init__(self, run: Run, run_dir: str | Path, *, resume: bool = False,
                 console=None, show_progress: bool = True, evaluation=None):
        cfg = run.config
        self.run = run
        self.cfg = cfg
        self.evaluation = evaluation
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.rank, self.world_size, self.device = init_distributed(cfg.train.device)
        self.is_main = self.rank == 0
        self.console = console
        self.show_progress = show_progress and self.is_main
        # metrics.jsonl (+ TensorBoard), rank 0 only; a missing extra stops here, before work
        self.runlog = RunLogger(self.run_dir, cfg.train.logger, enabled=self.is_main)

        t = cfg.train
        if run.data is None:
            raise ValueError("Trainer needs a run resolved with its data (open_data=True)")
        self.data = run.data
        self.image_size = run.image_size
        self.view_spec = run.view_spec
        torch.manual_seed(t.seed)
        self.global_batch = t.batch_size * self.world_size
        self.method = run.build_method()
        self.method.to(self.device)
        self.channels_last = self.device.type == "cuda" and t.channels_last
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = t.cudnn_benchmark
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32
            if self.channels_last:
                self.method.to(memory_format=torch.channels_last)
        if t.compile:
            compile_modules(self.method)
        self.model: nn.Module = self.method
        if self.world_size > 1:
            if t.sync_bn:
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(
                    self.method, process_group=D.sync_bn_process_group(t.sync_bn_group_size))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.model = nn.parallel.DistributedDataParallel(
                    self.method,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    broadcast_buffers=False,  # per-rank state (SwAV queues) stays per rank
                )
        self.decode_on = decode_device(t.decode, self.device, self.data.train)
        self.views_in_workers = self.decode_on is None and views_in_workers(
            t.views_in, self.device, self.data.train, t.num_workers)
        self.loader = BatchLoader(
            self.data.train, t.batch_size, shuffle=True, drop_last=True, seed=t.seed,
            rank=self.rank, world_size=self.world_size, num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda",
            views=(WorkerViews(self.view_spec, t.seed, self.rank) if self.views_in_workers
                   else None),
            decode_on=self.decode_on,
        )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.peak_lr = t.lr_per_256 * self.global_batch / 256
        self.warmup_steps = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.optimizer = build_optimizer(
            t.optimizer, self.method.trainable_parameters(), self.peak_lr, t.weight_decay,
            t.momentum, t.lars_eta, t.exclude_norm_and_bias,
        )
        self.autocast_dtype = amp_dtype(t.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.ctx = TrainContext(
            epoch=0, step=0, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            device=self.device, rank=self.rank, world_size=self.world_size,
            dataset_size=len(self.data.train), eval_batches=self.eval_batches,
        )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.nonfinite = NonFiniteGuard(self.device, t.skip_nonfinite, self.steps_per_epoch,
                                        self.run_dir, self._print, write_dump=self.is_main)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        # seconds of training (periodic evaluation excluded), carried across resumes: the
        # x axis of accuracy against compute, and what `compare --minutes` budgets
        self._train_s_before = 0.0
        self._clock: float | None = None
        self._eval_s = 0.0

    @property
    def train_seconds(self) -> float:
        """Training seconds so far, this run's earlier segments included (periodic kNN not)."""
        now = 0.0 if self._clock is None else time.perf_counter() - self._clock - self._eval_s
        return self._train_s_before + now

    # ---- data for hooks ------------------------------------------------------------------------
    def eval_batches(self, batch_size: int | None = None):
        """(normalised eval views, dataset index) over this rank's share of the training set."""
        loader = BatchLoader(
            self.data.train, batch_size or self.cfg.eval.batch_size, shuffle=False,
            drop_last=False, rank=self.rank, world_size=self.world_size,
            num_workers=self.cfg.train.num_workers,
        )
        try:
            for images, index, sizes in loader.iterate():
                images = images.to(self.device, non_blocking=True)
                sizes = sizes.to(self.device) if sizes is not None else None
                yield (eval_view(images, self.image_size, self.view_spec.mean,
                                 self.view_spec.std, sizes=sizes), index.to(self.device))
        finally:
            loader.close()

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "method_name": self.cfg.method,
            "config": json.dumps(to_dict(self.cfg), sort_keys=True),
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped_nonfinite": self.nonfinite.seen,
            "train_seconds": self.train_seconds,
            "world_size": self.world_size,
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.nonfinite.restore(int(state.get("skipped_nonfinite", 0)))
        self._train_s_before = float(state.get("train_seconds", 0.0))
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self) -> None:
        if self.is_main:
            save_checkpoint(self.state_dict(), self.run_dir)
        if self.world_size > 1:
            dist.barrier()

    def _restore(self) -> None:
        warn = self._print if self.is_main else (lambda *_: None)
        state, path = load_latest_checkpoint(self.run_dir, map_location=self.device, warn=warn)
        if state.get("world_size", 1) != self.world_size:
            warn(f"note: checkpoint was written with {state.get('world_size')} process(es); "
                 f"resuming with {self.world_size}")
        self.load_state_dict(state)
        # keep metrics up to the checkpoint, so the history equals an uninterrupted run's
        if self.is_main and self.metrics_path.exists():
            kept = []
            for line in self.metrics_path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= self.step:
                        kept.append(line)
            self.metrics_path.write_text("".join(k + "\n" for k in kept))
        warn(f"resumed from {path} at iteration {self.step} (epoch {self.epoch + 1}, "
             f"batch {self.batch_in_epoch})")

    # ---- logging -------------------------------------------------------------------------------
    def _print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, highlight=False)
        else:
            print(msg)

    def _log(self, record: dict[str, Any]) -> None:
        record = {k: jsonable(v) for k, v in record.items()}
        self.history.append(record)
        if self.is_main:
            self.runlog.log(record)

    # ---- one iteration ------------------------------------------------------------------------
    def _train_step(self, images: torch.Tensor | Views, index: torch.Tensor,
                    sizes: torch.Tensor | None = None):
        """One optimiser step (``sizes``: the images' original sizes, when they are canvases of
        real-size images; ``images`` may be the batch's crops already made, by the loader's
        workers, with this step's seed); returns the detached loss (a device tensor), the step
        output, the views and the lr. Nothing in it reads a device value on the host: a non-finite
        loss skips the update on the device (the optimiser's ``found_inf``, as GradScaler does),
        the methods mask their state updates with ``ctx.step_ok``, and the count reaches the
        host at the next log step (:class:`~ssl_zoo.nonfinite.NonFiniteGuard`)."""
        t = self.cfg.train
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.peak_lr,
                           self.peak_lr * t.final_lr_ratio, self.peak_lr * t.warmup_start_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(step_seed(t.seed, self.step, self.rank))
        if isinstance(images, Views):  # made in the workers from this step's seed
            # torch's generator left as if the crops were made here
            skip_view_draws(self.view_spec, index.shape[0], self.device)
            views = images.to(self.device, non_blocking=True)
        else:
            images = images.to(self.device, non_blocking=True)
            if sizes is not None:
                sizes = sizes.to(self.device, non_blocking=True)
            views = make_views(images, self.view_spec, sizes=sizes)
        if self.channels_last:
            views = Views([g.contiguous(memory_format=torch.channels_last)
                           for g in views.groups], views.counts)
        views.index = index.to(self.device, non_blocking=True)
        self.ctx.step, self.ctx.epoch = self.step, self.epoch
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype else contextlib.nullcontext())
        with autocast:
            out = self.model(views)
        loss = out.loss
        bad = (~torch.isfinite(loss.detach())).to(torch.float32)
        if self.world_size > 1:  # every rank skips if any rank's loss is non-finite
            bad = D.all_reduce_sum(bad.clone())
        ok = bad == 0
        self.optimizer.found_inf = (~ok).to(torch.float32)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        self.method.before_optimizer_step(self.ctx)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ctx.step_ok = ok
        self.method.after_optimizer_step(self.ctx)
        self.ctx.step_ok = None
        self.nonfinite.record(ok, self.step, out, views)
        return loss.detach(), out, views, lr

    def _read_metrics(self, loss: torch.Tensor, metrics: dict[str, Any]
                      ) -> tuple[float, dict[str, Any], int, int]:
        """The loss (mean over ranks), the metrics, the non-finite count and the first
        unreported non-finite iteration, brought to the host in one transfer."""
        keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
        mean_loss = D.all_reduce_mean(loss.detach().float().clone())
        values = torch.stack([mean_loss, *self.nonfinite.counters(),
                              *(metrics[k].detach().float().reshape(()) for k in keys)]).tolist()
        host = {k: values[3 + keys.index(k)] if k in keys else jsonable(v)
                for k, v in metrics.items()}
        return values[0], host, int(values[1]), int(values[2])

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        t = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume and not any(
                (self.run_dir / "checkpoints" / name).exists() for name in CHECKPOINT_NAMES):
            # killed before its first checkpoint: nothing to lose, start from the beginning
            self._print(f"note: {self.run_dir} has no checkpoint yet; starting from the "
                        "beginning")
            self.resume = False
        if self.resume:
            self._restore()
        elif self.is_main:
            self.metrics_path.write_text("")
        if self.is_main:
            (self.run_dir / "config.json").write_text(
                json.dumps(to_dict(self.cfg), indent=2, sort_keys=True) + "\n")
            info = {"image_size": self.image_size, "feature_dim": self.method.feature_dim,
                    "train_images": len(self.data.train), "world_size": self.world_size,
                    "global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
                    "skipped_bad_images": int(getattr(self.data, "skipped", 0) or 0),
                    "view_spec": to_dict(self.view_spec),
                    "views_made_in": "workers" if self.views_in_workers else "step",
                    "decoded_on": str(self.decode_on) if self.decode_on else "workers"}
            (self.run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
            self.runlog.open(self.step, resumed=self.resume,
                             texts={"config": to_dict(self.cfg), "run_info": info})
        self.method.train()
        self.ctx.step, self.ctx.epoch = self.step, self.epoch  # a resumed run's position
        self.method.on_train_start(self.ctx)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        self._clock, self._eval_s = started, 0.0
        images_seen = 0
        last_loss = float("nan")
        progress = training_progress(self.console) if self.show_progress else None
        window_t, window_n = time.perf_counter(), 0
        with progress or contextlib.nullcontext():
            while self.epoch < t.epochs and self.step < self.total_steps:
                self.ctx.epoch, self.ctx.step = self.epoch, self.step
                self.loader.set_epoch(self.epoch)
                if self.batch_in_epoch == 0:
                    self.method.on_epoch_start(self.ctx)
                    self.method.train()
                task = None
                if progress is not None:
                    task = progress.add_task(
                        f"epoch {self.epoch + 1}/{t.epochs}", total=self.steps_per_epoch,
                        completed=self.batch_in_epoch, loss=float("nan"), lr=0.0, ips=0.0)
                loss = None
                batches = self.loader.iterate(start_batch=self.batch_in_epoch,
                                              first_step=self.step)
                for images, index, sizes in prefetch(batches, self.device):
                    self.ctx.log_step = ((self.step + 1) % t.log_every_iters == 0
                                         or self.step + 1 == self.total_steps)
                    loss, out, views, lr = self._train_step(images, index, sizes)
                    self.step += 1
                    self.batch_in_epoch += 1
                    n = index.shape[0] * self.world_size
                    images_seen += n
                    window_n += n
                    if self.step % t.log_every_iters == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        ips = window_n / max(now - window_t, 1e-9)
                        window_t, window_n = now, 0
                        last_loss, metrics, bad, first_bad = self._read_metrics(loss, out.metrics)
                        self.nonfinite.check(self.step, bad, first_bad)
                        rec = {"step": self.step, "epoch": self.epoch + 1, "loss": last_loss,
                               "lr": lr, "images_per_s": ips}
                        rec.update({k: v for k, v in metrics.items() if k not in rec})
                        self._log(rec)
                        self.ctx.step = self.step
                        self.method.on_log(self.ctx, metrics)
                        if progress is not None:
                            progress.update(task, loss=last_loss, lr=lr, ips=ips)
                    if progress is not None:
                        progress.advance(task)
                    if (t.checkpoint_every_iters and self.step % t.checkpoint_every_iters == 0
                            and self.batch_in_epoch < self.steps_per_epoch):
                        self.nonfinite.check(self.step)
                        self.save()
                    if self.step >= self.total_steps:
                        break
                if loss is not None:
                    last_loss = float(D.all_reduce_mean(loss.clone()))
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                self.nonfinite.check(self.step)
                self.save()
                if (t.eval_every_epochs and self.epoch % t.eval_every_epochs == 0
                        and self.epoch < t.epochs and self.batch_in_epoch == 0):
                    self._periodic_knn()
        self.loader.close()  # its worker processes stop now, not whenever it is collected
        wall = time.perf_counter() - started
        train_s = self.train_seconds
        self._train_s_before, self._clock = train_s, None
        peak = (torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.device.type == "cuda" else _rss_mb())
        result = RunResult(self.run_dir, self.step, self.epoch, last_loss,
                           images_seen / max(wall, 1e-9), wall, peak, history=self.history)
        if self.cfg.eval.enabled and self.is_main:
            result.eval = self._final_eval()
        if self.is_main:
            summary = {"steps": self.step, "epochs": self.epoch, "final_loss": last_loss,
                       "images_per_s": result.images_per_s, "wall_s": wall,
                       "train_s": train_s,
                       "peak_memory_mb": peak}
            (self.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.runlog.close()
        return result

    # ---- evaluation ----------------------------------------------------------------------------
    def _periodic_knn(self) -> None:
        started = time.perf_counter()
        train_s = self.train_seconds
        if self.is_main and self.evaluation is not None:
            acc = self.evaluation.periodic(self.method.backbone, self.device)
            self.method.train()
            self._log({"step": self.step, "epoch": self.epoch, "train_s": train_s, **acc})
        if self.world_size > 1:
            dist.barrier()
        self._eval_s += time.perf_counter() - started

    def _final_eval(self) -> dict[str, Any] | None:
        if self.evaluation is None:
            return None
        result = self.evaluation.final(self.method, self.device, self.step)
        self.runlog.final_eval(result, self.step)
        return result


def _rss_mb() -> float:
    """Peak resident memory of this process in MiB (CPU runs)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # pragma: no cover - non-Unix
        return float("nan")
