"""The trainer: one loop for every method (docs/design.md, "Data flow").

source -> uint8 batches -> device -> views (batched augmentation) -> ``Method.forward`` -> loss ->
backward -> hooks -> optimiser -> metrics.jsonl, progress bar, atomic checkpoints -> evaluation.

Determinism: every iteration reseeds torch's generators from (seed, iteration, rank), and the
data order depends only on (seed, epoch). A run resumed from any checkpoint therefore replays the
same augmentations and batches as an uninterrupted one, and a seeded CPU run is bit-identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ssl_zoo import runstate, steps
from ssl_zoo.assemble import Run, resolve_device
from ssl_zoo.checkpoint import save_checkpoint
from ssl_zoo.contract import check_forward_signature, dry_step
from ssl_zoo.data.loader import step_seed
from ssl_zoo.data.views import Views, make_views, skip_view_draws
from ssl_zoo.method import TrainContext
from ssl_zoo.modules import distributed as D
from ssl_zoo.nonfinite import NonFiniteGuard, jsonable
from ssl_zoo.optim import (
    build_optimizer,
    clip_gradients,
    set_weight_decay,
    warmup_cosine,
    weight_decay_at,
)
from ssl_zoo.preemption import RunRequests, RunStopped, StopRequest, requeue_slurm_job
from ssl_zoo.report import training_progress
from ssl_zoo.runlog import RunLogger
from ssl_zoo.runstate import RunClock, RunResult
from ssl_zoo.steps import EpochBar, shutdown_distributed, views_in_workers
from ssl_zoo.typed import to_dict

__all__ = ["RunResult", "Trainer", "shutdown_distributed", "views_in_workers"]


class Trainer:
    """Trains an assembled :class:`~ssl_zoo.assemble.Run`, writing into ``run_dir``.

    Two handles on one network: ``self.method`` is the plain :class:`~ssl_zoo.Method` (its
    hooks, ``state_dict``, backbone and parameters: what the optimiser, checkpoints and
    evaluation see); ``self.model`` is what the step calls forward on: ``method`` itself on one
    process, its ``DistributedDataParallel`` wrapper under torchrun (DDP's forward arms the
    all-reduce of the gradients in backward). Only forward goes through ``model``, so checkpoint
    keys never carry DDP's ``module.`` prefix.

    Evaluation comes in as a callback (``evaluation``: an object with ``periodic(network,
    device) -> dict`` (the method's evaluated network, ``eval.network``) and
    ``final(method, device, step) -> dict``, as
    :class:`ssl_zoo.evaluation.run.RunEvaluation`), so the loop knows nothing of metrics.
    """

    def __init__(self, run: Run, run_dir: str | Path, *, resume: bool = False,
                 console=None, show_progress: bool = True, evaluation=None):
        self.run, self.cfg, self.evaluation = run, run.config, evaluation
        self.run_dir, self.resume, self.console = Path(run_dir), resume, console
        self._setup_process(show_progress)
        if run.data is None:
            raise ValueError("Trainer needs a run resolved with its data (open_data=True)")
        self.data, self.image_size, self.view_spec = run.data, run.image_size, run.view_spec
        torch.manual_seed(self.cfg.train.seed)
        self._setup_method()
        self._setup_data()
        self._setup_optimisation()
        self._setup_bookkeeping()

    # ---- setup ---------------------------------------------------------------------------------
    def _setup_process(self, show_progress: bool) -> None:
        """Rank, world size and device; rank 0 alone shows progress and writes records."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(self.cfg.train.device, local_rank)
        self.rank, self.world_size = steps.join_process_group(self.device)
        self.is_main = self.rank == 0
        self.show_progress = show_progress and self.is_main
        self.global_batch = self.cfg.train.batch_size * self.world_size
        # metrics.jsonl (+ TensorBoard), rank 0 only; a missing extra stops here, before work
        self.runlog = RunLogger(self.run_dir, self.cfg.train.logger, enabled=self.is_main)

    def _setup_method(self) -> None:
        """The method on its device, and ``model``: it, or its DDP wrapper (class docstring)."""
        self.method, self.model, self.channels_last = steps.place_method(
            self.run.build_method(), self.cfg.train, self.device, self.world_size)
        self.method.eval_network(self.cfg.eval.network)  # an unknown name: one line, now
        check_forward_signature(self.method)

    def _setup_data(self) -> None:
        """The training loader: this rank's share, decoded and cropped where the config says."""
        t = self.cfg.train
        self.loader, self.decode_on, self.views_in_workers = steps.train_loader(
            self.data.train, t, self.device, self.rank, self.world_size, self.view_spec)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)

    def _setup_optimisation(self) -> None:
        """Optimiser, learning-rate schedule, mixed precision (a loss scaler for fp16 only)."""
        t = self.cfg.train
        self.peak_lr = t.lr_per_256 * self.global_batch / 256
        self.warmup_steps = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.optimizer = build_optimizer(
            t.optimizer, self.method.trainable_parameters(), self.peak_lr, t.weight_decay,
            t.momentum, t.lars_eta, t.exclude_norm_and_bias,
        )
        self.autocast_dtype = steps.amp_dtype(t.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    def _setup_bookkeeping(self) -> None:
        """The position (step, epoch, batch), the context hooks see, the non-finite guard,
        the history and the clocks."""
        self.ctx = TrainContext(
            epoch=0, step=0, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
            device=self.device, rank=self.rank, world_size=self.world_size,
            dataset_size=len(self.data.train), eval_batches=self.eval_batches,
        )
        self.step = self.epoch = self.batch_in_epoch = 0
        self.nonfinite = NonFiniteGuard(self.device, self.cfg.train.skip_nonfinite,
                                        self.steps_per_epoch, self.run_dir, self._print,
                                        write_dump=self.is_main)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self.last_loss = float("nan")
        self._bar = EpochBar()
        self.clock = RunClock()
        self.stopper = StopRequest(self.cfg.train.stop_signals)
        self.requests = RunRequests(self.stopper, self.cfg.train.checkpoint_every_minutes,
                                    self.world_size)
        self._stopping = False
        self._dry_step_done = False

    @property
    def train_seconds(self) -> float:
        """Training seconds so far, this run's earlier segments included (periodic kNN not)."""
        return self.clock.seconds

    # ---- data for hooks ------------------------------------------------------------------------
    def eval_batches(self, batch_size: int | None = None):
        """(normalised eval views, dataset index) over this rank's share of the training set."""
        return steps.eval_view_batches(
            self.data.train, batch_size or self.cfg.eval.batch_size, self.cfg.train.num_workers,
            self.rank, self.world_size, self.device, self.image_size, self.view_spec)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
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
            "rng": runstate.rng_state(),
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
        self.clock.before = float(state.get("train_seconds", 0.0))
        runstate.set_rng_state(state["rng"])

    def save(self) -> None:
        """Rank 0 writes the checkpoint atomically (a signal waits for the write to end);
        every rank waits for it."""
        if self.is_main:
            with self.stopper.deferred():
                save_checkpoint(self.state_dict(), self.run_dir)
        if self.world_size > 1:
            dist.barrier()
        self.requests.saved()

    def _restore(self) -> None:
        warn = self._print if self.is_main else (lambda *_: None)
        state, path = runstate.load_to_resume(self.run_dir, self.device, self.world_size, warn)
        self.load_state_dict(state)
        if self.is_main:
            runstate.keep_metrics_up_to(self.metrics_path, self.step)
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
        host at the next log step (:class:`~ssl_zoo.nonfinite.NonFiniteGuard`). Each phase
        carries a ``torch.profiler`` label while a profiler runs (``benchmarks/bench_step.py``)."""
        t, label = self.cfg.train, steps.phase_labels()
        with label("zoo:hooks"):
            lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.peak_lr,
                               self.peak_lr * t.final_lr_ratio,
                               self.peak_lr * t.warmup_start_lr_ratio)
            steps.set_lr(self.optimizer, lr)
            set_weight_decay(self.optimizer, weight_decay_at(
                self.step, self.total_steps, t.weight_decay, t.weight_decay_end))
            torch.manual_seed(step_seed(t.seed, self.step, self.rank))
        with label("zoo:views"):
            views = self._views(images, index, sizes)
        self.ctx.step, self.ctx.epoch = self.step, self.epoch
        with label("zoo:forward"), steps.autocast(self.device, self.autocast_dtype):
            out = self.model(views, self.ctx)
        with label("zoo:nonfinite"):
            ok = steps.finite_on_every_rank(out.loss, self.optimizer, self.world_size)
        with label("zoo:backward"):
            steps.backward(out.loss, self.optimizer, self.scaler)
            grad_norm = clip_gradients(self.method.parameters(), t.clip_grad_norm)
            if grad_norm is not None:  # stays on the device; read at the log step
                out.metrics["grad_norm"] = grad_norm
        with label("zoo:hooks"):
            self.method.before_optimizer_step(self.ctx)
        with label("zoo:optimizer"):
            steps.optimizer_step(self.optimizer, self.scaler)
        with label("zoo:hooks"):
            self.ctx.step_ok = ok
            self.method.after_optimizer_step(self.ctx)
            self.ctx.step_ok = None
        with label("zoo:nonfinite"):
            self.nonfinite.record(ok, self.step, out, views)
        return out.loss.detach(), out, views, lr

    def _dry_step(self, images: torch.Tensor | Views, index: torch.Tensor,
                  sizes: torch.Tensor | None) -> None:
        """The contract's checks, once per process before its first iteration (a resumed run's
        too), on this iteration's batch and crops: forward returns a proper StepOutput and every
        trainable parameter gets a gradient (:func:`ssl_zoo.contract.dry_step`: nothing
        applied, state and generators put back, so the run is the same as without it). Not
        counted as training time."""
        t = self.cfg.train

        def make_views() -> Views:
            torch.manual_seed(step_seed(t.seed, self.step, self.rank))  # as _train_step draws
            return self._views(images, index, sizes)

        self.ctx.step, self.ctx.epoch = self.step, self.epoch
        with self.clock.paused():
            dry_step(self.method, make_views, self.ctx,
                     steps.autocast(self.device, self.autocast_dtype), self.world_size)
        self._dry_step_done = True

    def _views(self, images: torch.Tensor | Views, index: torch.Tensor,
               sizes: torch.Tensor | None) -> Views:
        """This step's crops on the device (made here, or by the workers from the same seed)."""
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
                           for g in views.groups], views.counts,
                          roles=views.roles, slots=views.slots)
        views.index = index.to(self.device, non_blocking=True)
        return views

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train to the end (or from a checkpoint, when resuming), then evaluate. On a stop
        signal: checkpoint, then raise :class:`~ssl_zoo.preemption.RunStopped`."""
        self._start()
        self.clock.start()
        self.requests.saved()
        self._bar = EpochBar(training_progress(self.console) if self.show_progress else None)
        with self._bar, self.stopper:
            while (self.epoch < self.cfg.train.epochs and self.step < self.total_steps
                   and not self._stopping):
                self._run_epoch()
                self._end_epoch()
        self.loader.close()  # its worker processes stop now, not whenever it is collected
        if self._stopping:
            self._stop()
        return self._finish()

    def _start(self) -> None:
        """Resume or start fresh, write the run's files, and call the method's start hook."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume and not runstate.has_checkpoint(self.run_dir):
            # killed before its first checkpoint: nothing to lose, start from the beginning
            self._print(f"note: {self.run_dir} has no checkpoint yet; starting from the "
                        "beginning")
            self.resume = False
        if self.resume:
            self._restore()
        elif self.is_main:
            self.metrics_path.write_text("")
        if self.is_main:
            self._write_run_files()
        self.method.train()
        self.ctx.step, self.ctx.epoch = self.step, self.epoch  # a resumed run's position
        self.method.on_train_start(self.ctx)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _write_run_files(self) -> None:
        """config.json and run_info.json, and the logger opened at this run's first step."""
        runstate.write_json(self.run_dir / "config.json", to_dict(self.cfg), sort_keys=True)
        info = {"image_size": self.image_size, "feature_dim": self.method.feature_dim,
                "train_images": len(self.data.train), "world_size": self.world_size,
                "global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
                "skipped_bad_images": int(getattr(self.data, "skipped", 0) or 0),
                "view_spec": to_dict(self.view_spec),
                "views_made_in": "workers" if self.views_in_workers else "step",
                "decoded_on": str(self.decode_on) if self.decode_on else "workers"}
        runstate.write_json(self.run_dir / "run_info.json", info)
        self.runlog.open(self.step, resumed=self.resume,
                         texts={"config": to_dict(self.cfg), "run_info": info})

    def _run_epoch(self) -> None:
        """The rest of this epoch's batches (all of them, unless resumed mid-epoch)."""
        self.ctx.epoch, self.ctx.step = self.epoch, self.step
        self.loader.set_epoch(self.epoch)
        if self.batch_in_epoch == 0:
            self.method.on_epoch_start(self.ctx)
            self.method.train()
        self._bar.start(f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                        self.steps_per_epoch, self.batch_in_epoch)
        loss = None
        batches = self.loader.iterate(start_batch=self.batch_in_epoch, first_step=self.step)
        for images, index, sizes in steps.prefetch(batches, self.device):
            self.ctx.log_step = self._is_log_step(self.step + 1)
            if not self._dry_step_done:
                self._dry_step(images, index, sizes)
            loss, out, _, lr = self._train_step(images, index, sizes)
            self.step += 1
            self.batch_in_epoch += 1
            self.clock.count(index.shape[0] * self.world_size)
            self._maybe_log(loss, out.metrics, lr)
            self._stopping, due = self.requests.after_step()
            self._maybe_checkpoint(due)
            if self.step >= self.total_steps or self._stopping:
                break
        if loss is not None:
            self.last_loss = float(D.all_reduce_mean(loss.clone()))

    def _is_log_step(self, step: int) -> bool:
        return step % self.cfg.train.log_every_iters == 0 or step == self.total_steps

    def _maybe_log(self, loss: torch.Tensor, metrics: dict[str, Any], lr: float) -> None:
        """On a log step: the one transfer to the host (the loss averaged over ranks, the
        metrics, the non-finite counters and, under DDP, the ranks' requests), a record,
        ``on_log``, the bar."""
        if self._is_log_step(self.step):
            ips = self.clock.window_rate()
            self.last_loss, host, (bad, first_bad), agreed = steps.read_to_host(
                loss, metrics, self.nonfinite.counters(), self.requests.flags(self.device))
            self.requests.agree(agreed)
            self.nonfinite.check(self.step, int(bad), int(first_bad))
            rec = {"step": self.step, "epoch": self.epoch + 1, "loss": self.last_loss,
                   "lr": lr, "images_per_s": ips}
            rec.update({k: v for k, v in host.items() if k not in rec})
            self._log(rec)
            self.ctx.step = self.step - 1  # the logged iteration's index (TrainContext.step)
            self.method.on_log(self.ctx, host)
            self._bar.update(loss=self.last_loss, lr=lr, ips=ips)
        self._bar.advance()

    def _maybe_checkpoint(self, due: bool) -> None:
        """A checkpoint within an epoch every ``train.checkpoint_every_iters``, or when
        ``train.checkpoint_every_minutes`` is ``due`` (an epoch's end, or a stop, always
        checkpoints, in :meth:`_end_epoch`)."""
        every = self.cfg.train.checkpoint_every_iters
        due = due or bool(every and self.step % every == 0)
        if due and not self._stopping and self.batch_in_epoch < self.steps_per_epoch:
            self.nonfinite.check(self.step)
            self.save()

    def _end_epoch(self) -> None:
        """After an epoch's batches (or at ``max_steps``): advance, checkpoint, maybe evaluate."""
        if self.batch_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        self.nonfinite.check(self.step)
        self.save()
        if not self._stopping:
            self._maybe_evaluate()

    def _stop(self) -> None:
        """After a stop signal's checkpoint: requeue the SLURM job when asked; RunStopped."""
        self.runlog.close()
        requeued = self.cfg.train.requeue and self.is_main and requeue_slurm_job(self._print)
        received = self.stopper.received
        raise RunStopped(self.step, received.name if received else "another rank's signal",
                         bool(requeued))

    def _finish(self) -> RunResult:
        """The run's result and train_summary.json, the final evaluation, the logger closed."""
        wall, train_s = self.clock.stop()
        peak = (torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.device.type == "cuda" else steps.rss_mb())
        result = RunResult(self.run_dir, self.step, self.epoch, self.last_loss,
                           self.clock.images / max(wall, 1e-9), wall, peak, history=self.history)
        if self.cfg.eval.enabled and self.is_main and self.evaluation is not None:
            result.eval = self.evaluation.final(self.method, self.device, self.step)
            self.runlog.final_eval(result.eval, self.step)
        if self.is_main:
            runstate.write_json(self.run_dir / "train_summary.json", {
                "steps": self.step, "epochs": self.epoch, "final_loss": self.last_loss,
                "images_per_s": result.images_per_s, "wall_s": wall, "train_s": train_s,
                "peak_memory_mb": peak})
        self.runlog.close()
        return result

    # ---- evaluation ----------------------------------------------------------------------------
    def _maybe_evaluate(self) -> None:
        """kNN every ``train.eval_every_epochs`` at an epoch's end (not the last: the final
        evaluation covers it)."""
        every = self.cfg.train.eval_every_epochs
        if (every and self.epoch % every == 0 and self.epoch < self.cfg.train.epochs
                and self.batch_in_epoch == 0):
            self._periodic_knn()

    def _periodic_knn(self) -> None:
        train_s = self.train_seconds
        with self.clock.paused():
            if self.is_main and self.evaluation is not None:
                acc = self.evaluation.periodic(self.method.eval_network(self.cfg.eval.network),
                                               self.device)
                self.method.train()
                self._log({"step": self.step, "epoch": self.epoch, "train_s": train_s, **acc})
            if self.world_size > 1:
                dist.barrier()
