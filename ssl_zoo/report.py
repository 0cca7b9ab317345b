"""Rich tables and JSON summaries shown to the user."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ssl_zoo.evaluation.results import HEADLINE_LABELS, KNN_PROTOCOL_TEXT, headline, metric

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
    ours, floor = headline(ev), headline(ev.get("random_init"))
    for name, value in ours.items():
        if value is not None:
            extra = f" (random init {fmt(floor[name])})" if floor[name] is not None else ""
            rows.append((f"{fmt(value)}{extra}", HEADLINE_LABELS[name]))
    return rows


def print_eval(console, result: dict[str, Any]) -> None:
    """The table ``ssl-zoo eval`` and the end of training show."""
    table = Table(title=f"evaluation: {result['method']} / {result['backbone']} on "
                        f"{result['dataset']}", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("trained", justify="right")
    table.add_column("random init", justify="right")
    base = result.get("random_init") or {}
    for proto in KNN_PROTOCOL_TEXT:
        got = (result.get("knn") or {}).get(proto)
        if got:
            b = (base.get("knn") or {}).get(proto) or {}
            table.add_row(f"kNN {proto} top-1", fmt(got["top1"]), fmt(b.get("top1")))
            table.add_row(f"kNN {proto} top-5", fmt(got["top5"]), fmt(b.get("top5")))
    if result.get("linear"):
        table.add_row("linear probe top-1", fmt(metric(result, "linear")),
                      fmt(metric(base, "linear")))
    if result.get("rankme"):
        table.add_row("RankMe effective rank", fmt(metric(result, "rankme"), 1),
                      fmt(metric(base, "rankme"), 1))
    if result.get("clustering"):
        for k in ("nmi", "ari", "purity"):
            table.add_row(f"k-means {k.upper()}", fmt(result["clustering"][k]),
                          fmt((base.get("clustering") or {}).get(k)))
    if result.get("method_clusters"):
        for k in ("nmi", "ari", "purity"):
            table.add_row(f"method clusters {k.upper()}", fmt(result["method_clusters"][k]), "-")
    console.print(table)


def training_progress(console) -> Progress:
    """The trainer's progress bar: one line per epoch with loss, lr and images/s."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
        TextColumn("{task.fields[ips]:.0f} img/s"), TimeRemainingColumn(),
        console=console, transient=False,
    )


def fmt_spread(s: dict[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    """``mean`` for one seed, ``mean ± sd`` for several (a spread from :func:`compare.spread`)."""
    if not s or s.get("mean") is None:
        return "-"
    mean = fmt(s["mean"] * scale, digits)
    return mean if s.get("sd") is None else f"{mean} ± {fmt(s['sd'] * scale, digits)}"


def comparison_title(budget: dict[str, Any]) -> str:
    seeds = budget.get("seeds") or []
    amount = (f"{budget['minutes']:g} minutes of training per method" if "minutes" in budget
              else f"{budget['epochs']} epochs")
    images = f" ({budget['train_images']} training images)" if budget.get("train_images") else ""
    seed_text = (f"seed {seeds[0]}" if len(seeds) == 1
                 else f"mean ± sd over seeds {','.join(map(str, seeds))}")
    return (f"{budget['dataset']}{images}, {budget['backbone']}, {amount}, batch "
            f"{budget['batch_size']}, {seed_text}")


def print_comparison(console, result: dict[str, Any]) -> None:
    """The ``ssl-zoo compare`` table: each method's headline numbers (mean ± sd over seeds),
    epochs run and minutes of training, under the random-init floor."""
    table = Table(title=comparison_title(result["budget"]), title_justify="left")
    for col in ("method", "kNN k=20 T=0.07", "kNN k=200 T=0.1", "linear", "NMI", "RankMe",
                "epochs", "train min", "images/s", "peak MiB"):
        table.add_column(col, justify="left" if col == "method" else "right")
    keys = ("knn_k20", "knn_k200", "linear", "nmi", "rankme")
    if result.get("random_init"):
        r = result["random_init"]
        table.add_row("random init", *(fmt_spread(r.get(k)) for k in keys), "-", "-", "-", "-",
                      style="dim")
    for m in result["methods"]:
        s = m["stats"]
        table.add_row(m["method"], *(fmt_spread(s.get(k)) for k in keys),
                      fmt_spread(s.get("epochs"), 0), fmt_spread(s.get("train_s"), 1, 1 / 60),
                      fmt_spread(s.get("images_per_s"), 0), fmt_spread(s.get("peak_memory_mb"), 0))
    console.print(table)
