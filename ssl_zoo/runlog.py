"""Where a run's records go: ``metrics.jsonl`` always, TensorBoard event files when asked.

The trainer hands one :class:`RunLogger` every record it logs (training metrics at log steps,
periodic kNN, the final evaluation); the records are plain numbers by then, so nothing here reads
the device. TensorBoard is an optional extra (``pip install -e ".[tensorboard]"``);
``train.logger=auto`` writes event files when it is installed, ``jsonl`` never, ``tensorboard``
always (and says which extra to install when it is missing).

Event files live in ``RUN_DIR/tb/``, so ``tensorboard --logdir runs/`` (or a compare's ``OUT``)
shows one run per run directory. A resumed run opens its writer with ``purge_step`` = checkpoint
step + 1: TensorBoard's reader then drops what the killed run wrote after its checkpoint, and
the resumed run writes those steps again, so each step appears once and in order. The writer is
flushed at every record, so a killed run loses no step it had checkpointed.
"""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssl_zoo.errors import ConfigError

try:  # optional extra: `pip install -e ".[tensorboard]"`
    from torch.utils.tensorboard import SummaryWriter
except ImportError:
    SummaryWriter = None

INSTALL_HINT = 'pip install -e ".[tensorboard]"'

# keys of a record that place it rather than measure something
_POSITION_KEYS = ("step", "epoch")
# sections of eval.json that hold numbers worth a curve, and bookkeeping inside them
_EVAL_SECTIONS = ("knn", "linear", "clustering", "method_clusters", "random_init")
_EVAL_SKIP = {"key", "n_train", "n_test", "feature_dim", "n_fit", "n_val", "k", "temperature",
              "steps", "epochs", "batch_size", "lr", "weight_decay", "sweep_val_top1",
              "sweep_val_loss", "recipe"}


def tensorboard_available() -> bool:
    """Whether the tensorboard package (and PyTorch's writer for it) can be imported."""
    return SummaryWriter is not None


def uses_tensorboard(choice: str) -> bool:
    """Whether ``train.logger = choice`` writes event files; a ConfigError when it cannot."""
    if choice == "tensorboard" and not tensorboard_available():
        raise ConfigError(f"train.logger=tensorboard needs the tensorboard package: {INSTALL_HINT}"
                          " (or --set train.logger=jsonl)")
    return choice == "tensorboard" or (choice == "auto" and tensorboard_available())


def _scalar(value: Any) -> float | None:
    """A record value as a number for a curve; None for lists, text and flags."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str):  # metrics.jsonl spells non-finite floats as text
        return float(value) if value in ("nan", "inf", "-inf") else None
    return float(value)


def eval_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The final evaluation's numbers as ``final/<section>/.../<name>`` tags (eval.json's tree)."""
    out: dict[str, float] = {}

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in _EVAL_SKIP:
                    walk(v, [*path, str(k)])
            return
        v = _scalar(node)
        if v is not None and math.isfinite(v):
            out["/".join(["final", *path])] = v

    for section in _EVAL_SECTIONS:
        if isinstance(result.get(section), dict):
            walk(result[section], [section])
    return out


def _markdown_code(data: Any) -> str:
    """JSON as a markdown code block (TensorBoard renders text summaries as markdown)."""
    return "\n".join("    " + line for line in json.dumps(data, indent=2).splitlines())


class RunLogger:
    """Appends records to ``metrics.jsonl`` and, when enabled, mirrors them into TensorBoard.

    ``enabled=False`` (ranks other than 0) makes every call a no-op. The logger choice is
    checked at construction, so a missing extra stops the run before any work.
    """

    def __init__(self, run_dir: str | Path, choice: str, *, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tb_dir = self.run_dir / "tb"
        self.tensorboard = uses_tensorboard(choice)
        self.enabled = enabled
        self._writer = None

    def open(self, step: int, *, resumed: bool, texts: dict[str, Any]) -> None:
        """Start the event writer at iteration ``step``; ``texts`` (name -> JSON-able data,
        e.g. the resolved config) are written once per run, at step 0."""
        if not (self.enabled and self.tensorboard) or self._writer is not None:
            return
        had_events = any(self.tb_dir.glob("events.out.tfevents.*"))
        # a fresh run purges everything a previous attempt left here (as metrics.jsonl is
        # emptied); a resumed one only what was written after its checkpoint
        self._writer = SummaryWriter(str(self.tb_dir), purge_step=step + 1 if resumed else 0)
        weakref.finalize(self, self._writer.close)
        if not (resumed and had_events):
            for name, data in texts.items():
                self._writer.add_text(name, _markdown_code(data), global_step=0)
        self._writer.flush()

    def log(self, record: dict[str, Any]) -> None:
        """One JSON-able record (it has a ``step``): a metrics.jsonl line and, with TensorBoard,
        one scalar per number under ``train/`` (records with a loss) or ``eval/`` (periodic
        evaluation)."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is None:
            return
        step = int(record["step"])
        section = "train" if "loss" in record else "eval"
        for key, value in record.items():
            v = _scalar(value)
            if key not in _POSITION_KEYS and v is not None:
                self._writer.add_scalar(key if "/" in key else f"{section}/{key}", v, step)
        self._writer.flush()

    def final_eval(self, result: dict[str, Any] | None, step: int) -> None:
        """The final evaluation at iteration ``step``: its numbers as scalars, and the PNGs it
        wrote (t-SNE map, cluster contact sheet, loss curve) as images."""
        if self._writer is None or not result:
            return
        for tag, v in eval_scalars(result).items():
            self._writer.add_scalar(tag, v, step)
        for p in result.get("pictures") or []:
            path = Path(p)
            if path.suffix.lower() != ".png" or not path.is_file():
                continue
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
            self._writer.add_image(f"final/{path.stem}", pixels, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
