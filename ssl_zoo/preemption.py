"""Runs that survive a cluster: a graceful stop on a signal, and a SLURM requeue after it
(docs/design.md, "Runs").

The first SIGTERM, SIGINT or SIGUSR1 (``train.stop_signals``) only sets a flag. The trainer
looks at it after each step: on one process it stops after the step that is running; under DDP
the ranks exchange their flags in the log step's one transfer (``train.log_every_iters``), so
every rank stops after the same step, at most ``log_every_iters`` steps after the signal, and
no step reads the device for it. Rank 0 then writes the checkpoint (atomically), the job
requeues itself when ``train.requeue`` asks, and the process exits with :data:`EXIT_STOPPED`.
Later signals change nothing (a cluster often signals twice: SLURM and torchrun both send its
signal to the ranks), except a second SIGINT (Ctrl-C twice), which stops at once
(KeyboardInterrupt) and leaves the last checkpoint as it was; while a checkpoint is being
written, even that waits for the write to end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import torch

EXIT_STOPPED = 75
"""Exit status of a run stopped early by a signal, resumable from its checkpoint
(``EX_TEMPFAIL`` of sysexits.h: a temporary failure, try again)."""

DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class RunStopped(Exception):
    """A run stopped on a signal after writing its checkpoint at ``step``."""

    def __init__(self, step: int, signal_name: str, requeued: bool = False):
        self.step, self.signal_name, self.requeued = step, signal_name, requeued
        super().__init__(f"stopped by {signal_name} at iteration {step}; the checkpoint holds "
                         "that iteration" + ("; the job was requeued" if requeued else ""))


def signal_numbers(names) -> list[signal.Signals]:
    """``train.stop_signals`` as signals; ValueError names an unknown one."""
    out = []
    for name in names:
        key = name.strip().upper()
        key = key if key.startswith("SIG") else "SIG" + key
        if not isinstance(getattr(signal, key, None), signal.Signals):
            raise ValueError(f"unknown signal {name!r} (e.g. SIGTERM, SIGINT, SIGUSR1)")
        out.append(getattr(signal, key))
    return out


class StopRequest:
    """Handlers of the stop signals, installed for the length of a ``with`` block (in the main
    thread only: Python runs signal handlers there)."""

    def __init__(self, names=DEFAULT_SIGNALS):
        self.signals = signal_numbers(names)
        self.received: signal.Signals | None = None  # the first stop signal
        self._writing = False
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        elif signum == signal.SIGINT and not self._writing:  # Ctrl-C twice: now
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """Inside, every signal only sets the flag: a checkpoint write is never interrupted."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False


def slurm_job_id(env=os.environ) -> str | None:
    """The id ``scontrol requeue`` takes (``ARRAYJOB_TASK`` for an array task), or None."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def requeue_slurm_job(say) -> bool:
    """``scontrol requeue $SLURM_JOB_ID``; says what happened in one line, True on success."""
    job = slurm_job_id()
    if job is None:
        say("note: train.requeue: not a SLURM job (no SLURM_JOB_ID); not requeued")
        return False
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"warning: scontrol requeue {job} failed ({exc}); requeue the job by hand")
        return False
    if out.returncode != 0:
        err = (out.stderr or out.stdout).strip().splitlines()
        say(f"warning: scontrol requeue {job} failed ({err[-1] if err else out.returncode}); "
            "requeue the job by hand")
        return False
    say(f"requeued SLURM job {job}")
    return True


class RunRequests:
    """What the loop is asked to do after a step: stop (a signal) or checkpoint (the minutes of
    ``train.checkpoint_every_minutes`` have passed since the last checkpoint). On one process
    this process's own requests, after every step; under DDP the ranks' requests travel in the
    log step's one transfer (:meth:`flags`, :meth:`agree`), and what they agreed is acted on
    after that step by every rank, so all ranks stop or checkpoint at the same step."""

    def __init__(self, stop: StopRequest, checkpoint_every_minutes: float, world_size: int):
        self.stop, self.minutes, self.world_size = stop, checkpoint_every_minutes, world_size
        self.saved_at = time.perf_counter()
        self._agreed = (False, False)

    def local(self) -> tuple[bool, bool]:
        """(stop, checkpoint due) of this process."""
        due = bool(self.minutes) and time.perf_counter() - self.saved_at >= 60 * self.minutes
        return self.stop.requested, due

    def flags(self, device: torch.device) -> torch.Tensor | None:
        """This rank's requests for the log step's transfer (None on one process)."""
        if self.world_size == 1:
            return None
        return torch.tensor(self.local(), dtype=torch.float32, device=device)

    def agree(self, averaged: list[float]) -> None:
        """The ranks' requests averaged in the transfer: any rank's request holds for all."""
        if averaged:
            self._agreed = (averaged[0] > 0, averaged[1] > 0)

    def after_step(self) -> tuple[bool, bool]:
        """(stop, checkpoint due) to act on after this step."""
        if self.world_size == 1:
            return self.local()
        agreed, self._agreed = self._agreed, (False, False)
        return agreed

    def saved(self) -> None:
        """A checkpoint was just written: the minutes count from now."""
        self.saved_at = time.perf_counter()
