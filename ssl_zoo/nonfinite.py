"""Steps with a non-finite loss: counted on the device, acted on when the host next looks.

The trainer skips such a step on the device (the optimiser's ``found_inf``) and tells the guard
with :meth:`NonFiniteGuard.record`, which only adds to device counters. At a log step or before
a checkpoint the trainer reads the counters (with the metrics, in one transfer) and calls
:meth:`NonFiniteGuard.check`: within the ``--skip-nonfinite`` budget it warns, beyond it it
writes a debug dump of the last step and stops the run with a one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ssl_zoo.errors import UserError


class TrainingStopped(UserError):
    """Training stopped on purpose (non-finite loss); the message says where and what was kept."""


def jsonable(v: Any) -> Any:
    """A metric as plain JSON data (tensors read to the host; inf/nan as text)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().float().item() if v.numel() == 1 else v.detach().cpu().tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class NonFiniteGuard:
    """Device counters of non-finite steps and what to do about them."""

    def __init__(self, device: torch.device, budget: int, steps_per_epoch: int,
                 run_dir: Path, say: Callable[[str], None], write_dump: bool):
        self.budget, self.steps_per_epoch = budget, steps_per_epoch
        self.run_dir, self.say, self.write_dump = Path(run_dir), say, write_dump
        self.seen = 0  # non-finite steps acted on so far (host; checkpointed by the trainer)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.first = torch.full((), -1, dtype=torch.long, device=device)  # first unreported
        self.last_step: tuple[Any, Any] | None = None  # the latest (StepOutput, Views)

    def restore(self, seen: int) -> None:
        """The count a checkpoint carried."""
        self.seen = seen
        self.count.fill_(seen)

    def record(self, ok: torch.Tensor, step: int, out, views) -> None:
        """Count this step if ``ok`` (a device bool) is False; no host read."""
        self.count += (~ok).long()
        self.first.copy_(torch.where(~ok & (self.first < 0), step, self.first))
        self.last_step = (out, views)

    def counters(self) -> list[torch.Tensor]:
        """The two counters, for the trainer's one transfer of a log step."""
        return [self.count.float(), self.first.float()]

    def check(self, step: int, count: int | None = None, first: int | None = None) -> None:
        """Act on the steps counted since the last check (reads the counters if not given)."""
        if count is None:
            count, first = (int(v) for v in torch.stack(self.counters()).tolist())
        if count <= self.seen:
            return
        new, self.seen = count - self.seen, count
        self.first.fill_(-1)
        where = (f"iteration {first} (epoch {first // self.steps_per_epoch + 1}, batch "
                 f"{first % self.steps_per_epoch})")
        if count <= self.budget:
            self.say(f"warning: non-finite loss at {where}; {new} step(s) skipped by "
                     f"iteration {step} ({count}/{self.budget})")
            return
        self.stop(where, first, step)

    def stop(self, where: str, first: int, step: int) -> None:
        dump = self.run_dir / f"nonfinite_step{first}.pt"
        if self.write_dump and self.last_step is not None:
            out, views = self.last_step
            stats = {}
            for i, g in enumerate(views.groups):
                g = g.detach().float()
                stats[f"views.group{i}"] = torch.stack([g.mean(), g.std(), g.min(), g.max()])
            torch.save({"where": where, "last_step": step - 1,
                        "loss": out.loss.detach().float().cpu(),
                        "batch_stats_mean_std_min_max": stats,
                        "method_debug": {k: v.detach().float().cpu() for k, v in out.debug.items()},
                        "metrics": {k: jsonable(v) for k, v in out.metrics.items()}}, dump)
        kept = self.run_dir / "checkpoints" / "last.pt"
        raise TrainingStopped(
            f"loss became non-finite at {where} (seen at iteration {step}); debug dump of the "
            f"last step: {dump}; last good checkpoint: {kept if kept.exists() else 'none yet'} "
            f"(resume with --resume {self.run_dir}, or allow skipping with --skip-nonfinite N)"
        )
