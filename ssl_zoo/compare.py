"""`ssl-zoo compare`: every method trained and evaluated under one budget, side by side.

Each method trains in ``OUT/<method>/`` with the same backbone, data, epochs, batch and seed,
evaluating kNN every epoch for the accuracy-per-epoch chart. A method whose run finished is not
trained again, and one that was interrupted resumes, so an interrupted compare picks up where
it stopped. Results: ``OUT/comparison.json``, a rich table and two PNG charts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssl_zoo.config import to_dict
from ssl_zoo.errors import ConfigError, UserError
from ssl_zoo.report import fmt


def _run_one(method: str, args, out: Path, console) -> dict[str, Any]:
    from ssl_zoo.cli import _diff_configs, _saved_config, assemble_config
    from ssl_zoo.train import Trainer

    args.method = method
    cfg = assemble_config(args)
    if not any(s.startswith(("train.eval_every_epochs", "eval_every_epochs")) for s in args.set):
        cfg.train.eval_every_epochs = 1
    run_dir = out / Path(method).stem.replace(":", "_")
    summary_path, eval_path = run_dir / "train_summary.json", run_dir / "eval.json"
    saved = run_dir / "config.json"
    resume = (run_dir / "checkpoints" / "last.pt").exists() or (
        run_dir / "checkpoints" / "prev.pt").exists()
    if resume and saved.is_file():
        diff = _diff_configs(_saved_config(json.loads(saved.read_text())), to_dict(cfg))
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(diff)});"
                              " use another --out to compare under a new budget")
    if summary_path.is_file() and (eval_path.is_file() or not cfg.eval.enabled):
        console.print(f"[dim]{method}: finished run found in {run_dir}, not retrained[/]")
    else:
        console.print(f"[bold]{method}[/] -> {run_dir}" + (" (resuming)" if resume else ""))
        trainer = Trainer(cfg, run_dir, resume=resume, console=console)
        trainer.fit()
    summary = json.loads(summary_path.read_text())
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "knn_top1" in rec:
            curve.append((rec["epoch"], rec["knn_top1"]))
    final_knn = ((evaluation.get("knn") or {}).get("k20_t0.07") or {}).get("top1")
    if final_knn is not None:
        curve.append((summary["epochs"], final_knn))
    return {"method": method, "run_dir": str(run_dir), "train": summary, "eval": evaluation,
            "knn_per_epoch": curve, "config": to_dict(cfg)}


def run_compare(methods: list[str], args, console) -> dict[str, Any]:
    """Train + evaluate each method; write comparison.json, a table and PNG charts."""
    from ssl_zoo import registry

    for m in methods:  # fail fast on a typo, before hours of training
        registry.get_method(m)
    if len(set(methods)) != len(methods):
        raise UserError("--methods: a method is named twice")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_run_one(m, args, out, console) for m in methods]
    baseline = next((r["eval"].get("random_init") for r in rows if r["eval"].get("random_init")),
                    None)
    result = {"methods": rows, "random_init": baseline,
              "budget": {k: rows[0]["config"][k] for k in ("dataset", "backbone")}
              | {k: rows[0]["config"]["train"][k] for k in ("epochs", "batch_size", "seed")}}
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    print_comparison(console, result)
    charts = comparison_charts(result, out)
    console.print("wrote " + ", ".join(str(p) for p in [out / "comparison.json", *charts]))
    return result


def headline(ev: dict[str, Any]) -> dict[str, float | None]:
    """The numbers a comparison shows for one evaluation dict."""
    knn = ev.get("knn") or {}
    return {
        "knn_k20": (knn.get("k20_t0.07") or {}).get("top1"),
        "knn_k200": (knn.get("k200_t0.1") or {}).get("top1"),
        "linear": (ev.get("linear") or {}).get("test_top1"),
        "nmi": (ev.get("clustering") or {}).get("nmi"),
    }


def print_comparison(console, result: dict[str, Any]) -> None:
    from rich.table import Table

    b = result["budget"]
    table = Table(title=f"{b['dataset']}, {b['backbone']}, {b['epochs']} epochs, batch "
                        f"{b['batch_size']}, seed {b['seed']}", title_justify="left")
    for col in ("method", "kNN k=20 T=0.07", "kNN k=200 T=0.1", "linear", "NMI", "images/s",
                "peak MiB", "wall s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    if result.get("random_init"):
        h = headline(result["random_init"])
        table.add_row("random init", fmt(h["knn_k20"]), fmt(h["knn_k200"]), fmt(h["linear"]),
                      fmt(h["nmi"]), "-", "-", "-", style="dim")
    for r in result["methods"]:
        h, t = headline(r["eval"]), r["train"]
        table.add_row(r["method"], fmt(h["knn_k20"]), fmt(h["knn_k200"]), fmt(h["linear"]),
                      fmt(h["nmi"]), fmt(t["images_per_s"], 0), fmt(t["peak_memory_mb"], 0),
                      fmt(t["wall_s"], 0))
    console.print(table)


def comparison_charts(result: dict[str, Any], out: Path) -> list[Path]:
    from ssl_zoo.evaluation import plots

    curves = {r["method"]: r["knn_per_epoch"] for r in result["methods"] if r["knn_per_epoch"]}
    finals = {r["method"]: headline(r["eval"]) for r in result["methods"]}
    if result.get("random_init"):
        finals = {"random init": headline(result["random_init"]), **finals}
    paths = []
    if curves:
        paths.append(plots.knn_curves(curves, out / "knn_per_epoch.png"))
    paths.append(plots.metric_bars(finals, out / "final_metrics.png"))
    return paths
