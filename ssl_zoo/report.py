"""Rich tables and JSON summaries shown to the user."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

LOG_WIDTH = 1000
"""Console width when the output is not a terminal: wide enough that a table fits its content."""


def make_console(file=None) -> Console:
    """The console every command prints through.

    On a terminal, rich's defaults (the terminal's width, colour, a live progress bar). Anywhere
    else (a log file, a pipe, a SLURM output file, a test's capture) messages are never
    hard-wrapped, whatever ``COLUMNS`` says: one message is one line, so a path in it can be
    copied and grepped; tables take the width of their content instead of being cut at 80.
    """
    probe = Console(file=file)
    if probe.is_terminal:
        return Console(file=file, highlight=False)
    return Console(file=file, highlight=False, soft_wrap=True, width=LOG_WIDTH)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def print_train_summary(console, cfg, result) -> None:
    """A short table at the end of ``ssl-zoo train``: what ran, how fast, how good."""
    table = Table(title=f"{cfg.method} on {cfg.dataset}", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("iterations / epochs", f"{result.steps} / {result.epochs_done}")
    table.add_row("final loss", fmt(result.final_loss, 4))
    table.add_row("images/s (train)", fmt(result.images_per_s, 1))
    table.add_row("wall time (s)", fmt(result.wall_s, 1))
    table.add_row("peak memory (MiB)", fmt(result.peak_memory_mb, 0))
    ev = result.eval or {}
    for key, label in eval_rows(ev):
        table.add_row(label, key)
    table.add_row("run directory", str(result.run_dir))
    console.print(table)


def eval_rows(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, label) rows for the headline evaluation numbers, with the random-init floor."""
    rows = []
    base = ev.get("random_init", {}) or {}
    for proto in ("k20_t0.07", "k200_t0.1"):
        knn = (ev.get("knn") or {}).get(proto)
        if knn:
            floor = ((base.get("knn") or {}).get(proto) or {}).get("top1")
            extra = f" (random init {fmt(floor)})" if floor is not None else ""
            rows.append((f"{fmt(knn['top1'])}{extra}", f"kNN top-1 {proto}"))
    lin = ev.get("linear")
    if lin:
        rows.append((fmt(lin.get("test_top1")), "linear probe top-1"))
    clu = ev.get("clustering")
    if clu:
        rows.append((fmt(clu.get("nmi")), "k-means NMI"))
    return rows
