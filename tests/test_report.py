"""What the commands print: one message per line and whole tables when the output is a file."""

from __future__ import annotations

import io

from rich.table import Table

from ssl_zoo.cli import main
from ssl_zoo.report import make_console


def test_messages_with_long_paths_stay_on_one_line_in_a_log(monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    log = io.StringIO()
    console = make_console(file=log)
    path = "/scratch/" + "/".join(f"level{i:02d}" for i in range(30)) + "/run"
    console.print(f"[dim]swav: finished run found in {path}, not retrained[/]")
    console.print(f"resumed from {path}/checkpoints/last.pt at iteration 12")
    lines = log.getvalue().splitlines()
    assert lines == [f"swav: finished run found in {path}, not retrained",
                     f"resumed from {path}/checkpoints/last.pt at iteration 12"]


def test_tables_keep_whole_cells_in_a_log(monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    log = io.StringIO()
    table = Table(title="summary")
    table.add_column("metric")
    table.add_column("value")
    long_value = "runs/" + "x" * 150
    table.add_row("run directory", long_value)
    table.add_row("kNN top-1", "0.406")
    make_console(file=log).print(table)
    rows = [line for line in log.getvalue().splitlines() if "run directory" in line]
    assert len(rows) == 1 and long_value in rows[0]  # not wrapped, not cut with an ellipsis
    assert "…" not in log.getvalue()


def test_the_cli_prints_a_long_run_directory_on_one_line(tmp_path, capsys, toy_method_file):
    run = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i}" for i in range(6)], "run")
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1",
                 "--batch-size", "64", "--no-progress", "--no-eval", "--set",
                 "train.max_steps=2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert any(line.rstrip().endswith(f"-> {run}") for line in out.splitlines()), out
    assert any(str(run) in line and "run directory" in line for line in out.splitlines()), out
