"""A run's bookkeeping on disk and in the random generators (docs/design.md, "Runs"): the
config and run-info files, the generators' state a checkpoint carries, whether a run directory
holds a checkpoint, and the metrics a resumed run keeps.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssl_zoo.checkpoint import NAMES as CHECKPOINT_NAMES
from ssl_zoo.checkpoint import load_latest_checkpoint


@dataclass
class RunResult:
    """What :meth:`ssl_zoo.train.Trainer.fit` returns (and train_summary.json holds)."""

    run_dir: Path
    steps: int
    epochs_done: int
    final_loss: float
    images_per_s: float
    wall_s: float
    peak_memory_mb: float
    eval: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a checkpoint file (loadable or not)."""
    return any((Path(run_dir) / "checkpoints" / name).exists() for name in CHECKPOINT_NAMES)


def load_to_resume(run_dir: Path, device: torch.device, world_size: int, warn
                   ) -> tuple[dict[str, Any], Path]:
    """The newest loadable checkpoint of ``run_dir`` (and its path), on ``device``; a note when
    it was written by another number of processes."""
    state, path = load_latest_checkpoint(run_dir, map_location=device, warn=warn)
    if state.get("world_size", 1) != world_size:
        warn(f"note: checkpoint was written with {state.get('world_size')} process(es); "
             f"resuming with {world_size}")
    return state, path


def rng_state() -> dict[str, Any]:
    """torch's generators (the CPU one, and every CUDA one when present)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s generators (CUDA ones where this machine has them)."""
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(rng["cuda"])


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop the records after ``step`` (a killed run wrote them past its checkpoint), so a
    resumed run's history equals an uninterrupted run's."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def write_json(path: Path, data: Any, sort_keys: bool = False) -> None:
    """``data`` as indented JSON with a final newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


class RunClock:
    """Training seconds (periodic evaluation excluded), carried across resumes: the x axis of
    accuracy against compute, and what ``compare --minutes`` budgets; and the images/s of each
    log window."""

    def __init__(self):
        self.before = 0.0  # seconds of this run's earlier segments (from its checkpoint)
        self.started: float | None = None
        self.excluded = 0.0  # seconds of periodic evaluation in this segment
        self.images = 0  # images trained on in this segment (all ranks)
        self._window_n, self._window_t = 0, 0.0

    def start(self) -> None:
        self.started = self._window_t = time.perf_counter()
        self.excluded = 0.0

    @property
    def seconds(self) -> float:
        """Training seconds so far, earlier segments included."""
        now = 0.0 if self.started is None else time.perf_counter() - self.started - self.excluded
        return self.before + now

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count as training."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - begin

    def count(self, images: int) -> None:
        self.images += images
        self._window_n += images

    def window_rate(self) -> float:
        """Images/s since the previous call (or the start); a new window begins."""
        now = time.perf_counter()
        rate = self._window_n / max(now - self._window_t, 1e-9)
        self._window_t, self._window_n = now, 0
        return rate

    def stop(self) -> tuple[float, float]:
        """(wall seconds of this segment, training seconds in all); the clock stops."""
        wall = time.perf_counter() - (self.started or time.perf_counter())
        seconds = self.seconds
        self.before, self.started = seconds, None
        return wall, seconds
