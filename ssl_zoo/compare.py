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

from ssl_zoo import registry
from ssl_zoo.assemble import Run, config_differences, resolve
from ssl_zoo.errors import ConfigError, UserError
from ssl_zoo.evaluation import plots
from ssl_zoo.evaluation.results import headline, metric
from ssl_zoo.evaluation.run import RunEvaluation
from ssl_zoo.report import print_comparison
from ssl_zoo.train import Trainer


def plan(methods: list[str], base: dict[str, Any], sets: list[str],
         open_data: bool | None = True) -> list[Run]:
    """Each method's run under the shared budget (kNN every epoch unless set otherwise)."""
    for m in methods:  # fail fast on a typo, before hours of training
        registry.get_method(m)
    if len(set(methods)) != len(methods):
        raise UserError("--methods: a method is named twice")
    extra = [] if any(s.startswith(("train.eval_every_epochs", "eval_every_epochs"))
                      for s in sets) else ["train.eval_every_epochs=1"]
    return [resolve(base, [*sets, *extra], method=m, open_data=open_data) for m in methods]


def run_dir_of(out: Path, method: str) -> Path:
    return out / Path(method).stem.replace(":", "_")


def _run_one(run: Run, out: Path, console, show_progress: bool) -> dict[str, Any]:
    method = run.config.method
    cfg = run.config
    run_dir = run_dir_of(out, method)
    summary_path, eval_path = run_dir / "train_summary.json", run_dir / "eval.json"
    saved = run_dir / "config.json"
    resume = (run_dir / "checkpoints" / "last.pt").exists() or (
        run_dir / "checkpoints" / "prev.pt").exists()
    if resume and saved.is_file():
        diff = config_differences(json.loads(saved.read_text()), run.summary())
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(diff)});"
                              " use another --out to compare under a new budget")
    if summary_path.is_file() and (eval_path.is_file() or not cfg.eval.enabled):
        console.print(f"[dim]{method}: finished run found in {run_dir}, not retrained[/]")
    else:
        console.print(f"[bold]{method}[/] -> {run_dir}" + (" (resuming)" if resume else ""))
        evaluation = RunEvaluation(run.data, run.view_spec, cfg, run_dir, console=console)
        Trainer(run, run_dir, resume=resume, console=console, evaluation=evaluation,
                show_progress=show_progress).fit()
    summary = json.loads(summary_path.read_text())
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "knn_top1" in rec:
            curve.append((rec["epoch"], rec["knn_top1"]))
    final_knn = metric(evaluation, "knn_k20")
    if final_knn is not None:
        curve.append((summary["epochs"], final_knn))
    return {"method": method, "run_dir": str(run_dir), "train": summary, "eval": evaluation,
            "knn_per_epoch": curve, "config": run.summary()}


def run_compare(runs: list[Run], out: str | Path, console, show_progress: bool = True
                ) -> dict[str, Any]:
    """Train + evaluate each planned run; write comparison.json, a table and PNG charts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_run_one(r, out, console, show_progress) for r in runs]
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


def comparison_charts(result: dict[str, Any], out: Path) -> list[Path]:
    curves = {r["method"]: r["knn_per_epoch"] for r in result["methods"] if r["knn_per_epoch"]}
    finals = {r["method"]: headline(r["eval"]) for r in result["methods"]}
    if result.get("random_init"):
        finals = {"random init": headline(result["random_init"]), **finals}
    paths = []
    if curves:
        paths.append(plots.knn_curves(curves, out / "knn_per_epoch.png"))
    paths.append(plots.metric_bars(finals, out / "final_metrics.png"))
    return paths
