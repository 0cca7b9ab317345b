"""`ssl-zoo compare`: every method trained and evaluated under one budget, side by side.

Each method trains in ``OUT/<method>/`` (``OUT/<method>/seed<S>/`` with ``--seeds``) with the
same backbone, data, batch and seed, evaluating kNN every epoch for the accuracy-per-epoch and
accuracy-per-minute charts. The budget is a number of epochs, or with ``--minutes M`` the same
training time for every method: a short measured warm-up (a few steps in a scratch directory)
gives each run's images/s, from which its number of epochs is fixed before it starts, so the
cosine schedule still ends at the end; the epochs actually run and the training seconds are
reported. A method whose run finished is not trained again, and one that was interrupted
resumes (with the epochs fixed at its first start), so an interrupted compare picks up where
it stopped. Results: ``OUT/comparison.json``, a rich table and three PNG charts.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
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

SPREAD = "sd: sample standard deviation over seeds; min/max: the lowest and highest seed"
MEASURE_STEPS = 25
"""Steps of the warm-up that times a run for ``--minutes`` (the first 5 are not timed)."""
LATE_EPOCH = 10_000
"""The epoch the timed ``on_epoch_start`` call is told it is at: past any method's warm-up."""


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a one-line error for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: a seed is named twice in {text!r}")
    return seeds


def plan(methods: list[str], base: dict[str, Any], sets: list[str],
         open_data: bool | None = True, seeds: list[int] | None = None) -> list[Run]:
    """Each method's run (one per seed) under the shared budget (kNN every epoch unless set
    otherwise). ``seeds`` None: one run per method with the config's seed."""
    for m in methods:  # fail fast on a typo, before hours of training
        registry.get_method(m)
    if len(set(methods)) != len(methods):
        raise UserError("--methods: a method is named twice")
    extra = [] if any(s.startswith(("train.eval_every_epochs", "eval_every_epochs"))
                      for s in sets) else ["train.eval_every_epochs=1"]
    per_seed = [[]] if seeds is None else [[f"train.seed={s}"] for s in seeds]
    return [resolve(base, [*sets, *extra, *seed_set], method=m, open_data=open_data)
            for m in methods for seed_set in per_seed]


def run_dir_of(out: Path, method: str, seed: int | None = None) -> Path:
    """``OUT/<method>`` or, for a seeded comparison, ``OUT/<method>/seed<S>``."""
    d = out / Path(method).stem.replace(":", "_")
    return d if seed is None else d / f"seed{seed}"


def with_train(run: Run, **changes: Any) -> Run:
    """The same run with some ``train`` fields changed (they do not affect resolution)."""
    cfg = dataclasses.replace(run.config, train=dataclasses.replace(run.config.train, **changes))
    return dataclasses.replace(run, config=cfg)


# --------------------------------------------------------------------------------------------
# equal compute
# --------------------------------------------------------------------------------------------
def measure_speed(run: Run, steps: int = MEASURE_STEPS) -> tuple[float, int, int, float]:
    """(training images/s, steps per epoch, global batch, seconds of one epoch-start hook) of
    ``run`` on this machine, from ``steps`` real training steps in a scratch directory (the
    first 5 not timed), then the method's ``on_epoch_start`` timed once as at a late epoch
    (PCL clusters the whole training set there: a per-epoch cost the steps do not show)."""
    warm = 5
    probe = with_train(run, max_steps=steps, log_every_iters=warm, eval_every_epochs=0,
                       checkpoint_every_iters=0, logger="jsonl", epochs=max(
                           run.config.train.epochs, steps))
    probe = dataclasses.replace(probe, config=dataclasses.replace(
        probe.config, eval=dataclasses.replace(probe.config.eval, enabled=False)))
    with tempfile.TemporaryDirectory(prefix="ssl-zoo-measure-") as tmp:
        trainer = Trainer(probe, tmp, show_progress=False)
        trainer.fit()
        records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        trainer.ctx.epoch, trainer.ctx.step = LATE_EPOCH, trainer.step
        started = time.perf_counter()
        trainer.method.on_epoch_start(trainer.ctx)
        hook_s = time.perf_counter() - started
    windows = [r["images_per_s"] for r in records if "images_per_s" in r and r["step"] > warm]
    if not windows:
        raise ConfigError(f"--minutes: the warm-up needs more than {warm} steps; the data has "
                          f"{trainer.steps_per_epoch} per epoch")
    return statistics.median(windows), trainer.steps_per_epoch, trainer.global_batch, hook_s


def epochs_for(minutes: float, images_per_s: float, steps_per_epoch: int, batch: int,
               epoch_start_s: float = 0.0) -> int:
    """Whole epochs that fill ``minutes`` of training at ``images_per_s`` plus
    ``epoch_start_s`` per epoch (at least 1)."""
    epoch_s = steps_per_epoch * batch / images_per_s + epoch_start_s
    return max(1, round(minutes * 60 / epoch_s))


def _time_budget(run: Run, run_dir: Path, minutes: float, console) -> dict[str, Any]:
    path = run_dir / "budget.json"
    if path.is_file():
        budget = json.loads(path.read_text())
        if budget.get("minutes") != minutes:
            raise ConfigError(f"{run_dir} holds a run budgeted at {budget.get('minutes')} "
                              f"minutes; use another --out to compare at {minutes}")
        return budget
    console.print(f"[dim]{run.config.method}: timing {MEASURE_STEPS} steps to fit "
                  f"{minutes:g} minutes[/]")
    ips, spe, batch, hook_s = measure_speed(run)
    budget = {"minutes": minutes, "measured_images_per_s": ips, "measure_steps": MEASURE_STEPS,
              "steps_per_epoch": spe, "global_batch": batch, "epoch_start_s": hook_s,
              "epochs": epochs_for(minutes, ips, spe, batch, hook_s)}
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(budget, indent=2) + "\n")
    return budget


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------
def _knn_curve(run_dir: Path, summary: dict[str, Any], evaluation: dict[str, Any]
               ) -> list[dict[str, float]]:
    """kNN top-1 (k=20) at every evaluated epoch with the training seconds spent by then."""
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "knn_top1" in rec:
            curve.append({"epoch": rec["epoch"], "train_s": rec.get("train_s"),
                          "knn_top1": rec["knn_top1"]})
    final_knn = metric(evaluation, "knn_k20")
    if final_knn is not None:
        curve.append({"epoch": summary["epochs"], "train_s": summary.get("train_s"),
                      "knn_top1": final_knn})
    return curve


def _run_one(run: Run, out: Path, console, show_progress: bool, by_seed: bool,
             minutes: float | None) -> dict[str, Any]:
    method, seed = run.config.method, run.config.train.seed
    run_dir = run_dir_of(out, method, seed if by_seed else None)
    summary_path, eval_path = run_dir / "train_summary.json", run_dir / "eval.json"
    budget = None
    if minutes is not None:
        budget = _time_budget(run, run_dir, minutes, console)
        run = with_train(run, epochs=int(budget["epochs"]))
    cfg = run.config
    saved = run_dir / "config.json"
    resume = (run_dir / "checkpoints" / "last.pt").exists() or (
        run_dir / "checkpoints" / "prev.pt").exists()
    if (resume or summary_path.is_file()) and saved.is_file():
        diff = config_differences(json.loads(saved.read_text()), run.summary())
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(diff)});"
                              " use another --out to compare under a new budget")
    name = f"{method} seed {seed}" if by_seed else method
    if summary_path.is_file() and (eval_path.is_file() or not cfg.eval.enabled):
        console.print(f"[dim]{name}: finished run found in {run_dir}, not retrained[/]")
    else:
        plan_text = f", {cfg.train.epochs} epochs for {minutes:g} min" if budget else ""
        console.print(f"[bold]{name}[/] -> {run_dir}{plan_text}"
                      + (" (resuming)" if resume else ""))
        evaluation = RunEvaluation(run.data, run.view_spec, cfg, run_dir, console=console)
        Trainer(run, run_dir, resume=resume, console=console, evaluation=evaluation,
                show_progress=show_progress).fit()
    summary = json.loads(summary_path.read_text())
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    row = {"method": method, "seed": seed, "run_dir": str(run_dir), "train": summary,
           "eval": evaluation, "knn_curve": _knn_curve(run_dir, summary, evaluation),
           "config": run.summary()}
    if budget:
        row["budget"] = budget
    return row


# --------------------------------------------------------------------------------------------
# over seeds
# --------------------------------------------------------------------------------------------
def spread(values: list[float | None]) -> dict[str, float | None] | None:
    """mean, sd (sample; None for one value), min and max of the values given (None skipped)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals), "n": len(vals)}


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    evals = [headline(r["eval"]) for r in rows]
    out = {k: spread([e[k] for e in evals]) for k in evals[0]}
    for k in ("epochs", "train_s", "images_per_s", "peak_memory_mb", "final_loss"):
        out[k] = spread([r["train"].get(k) for r in rows])
    return out


def mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Per evaluated epoch present in every seed: mean/min/max kNN and mean training time.
    Where the seeds ended at different epochs (a ``--minutes`` budget plans each seed's epochs
    from its own warm-up), their final points are not all at a common epoch, so one more point
    closes the curve: the seeds' final kNN (what the table reports) at their mean final epoch
    and mean training time, marked ``"final": True``."""
    if not curves or not all(curves):
        return []
    common = set.intersection(*({p["epoch"] for p in c} for c in curves))

    def point(pts: list[dict[str, float]], epoch: float) -> dict[str, Any]:
        ks = [p["knn_top1"] for p in pts]
        ts = [p["train_s"] for p in pts if p.get("train_s") is not None]
        return {"epoch": epoch, "knn_mean": statistics.fmean(ks), "knn_min": min(ks),
                "knn_max": max(ks),
                "train_s": statistics.fmean(ts) if len(ts) == len(pts) else None}

    out = [point([next(p for p in reversed(c) if p["epoch"] == epoch) for c in curves], epoch)
           for epoch in sorted(common)]
    finals = [c[-1] for c in curves]
    if len({p["epoch"] for p in finals}) > 1:
        out.append(point(finals, statistics.fmean(p["epoch"] for p in finals)) | {"final": True})
    return out


def run_compare(runs: list[Run], out: str | Path, console, show_progress: bool = True, *,
                by_seed: bool = False, minutes: float | None = None) -> dict[str, Any]:
    """Train + evaluate each planned run; write comparison.json, a table and PNG charts.

    ``by_seed``: runs live in ``OUT/<method>/seed<S>`` (a ``--seeds`` comparison);
    ``minutes``: every run gets that much training time (epochs fixed by a measured warm-up).
    """
    if minutes is not None and not minutes > 0:
        raise UserError(f"--minutes: expected a positive number, got {minutes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_run_one(r, out, console, show_progress, by_seed, minutes) for r in runs]
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        methods.setdefault(r["method"], []).append(r)
    entries = []
    for name, mine in methods.items():
        entries.append({"method": name, "seeds": [r["seed"] for r in mine], "stats": _stats(mine),
                        "knn_curve": mean_curve([r["knn_curve"] for r in mine]), "runs": mine})
    first = entries[0]["runs"]  # random init depends on the seed only, not on the method
    floors = [r["eval"].get("random_init") for r in first if r["eval"].get("random_init")]
    random_init = None
    if floors:
        random_init = {k: spread([headline(f)[k] for f in floors]) for k in headline(None)}
    c0 = rows[0]["config"]
    budget = ({k: c0[k] for k in ("dataset", "backbone")}
              | {k: c0["train"][k] for k in ("batch_size",)}
              | {"seeds": entries[0]["seeds"], "train_images": _train_images(runs[0])})
    budget |= {"minutes": minutes} if minutes is not None else {"epochs": c0["train"]["epochs"]}
    result = {"methods": entries, "random_init": random_init, "budget": budget,
              "spread": SPREAD}
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    print_comparison(console, result)
    charts = comparison_charts(result, out)
    console.print("wrote " + ", ".join(str(p) for p in [out / "comparison.json", *charts]))
    return result


def _train_images(run: Run) -> int | None:
    return len(run.data.train) if run.data is not None else None


def comparison_charts(result: dict[str, Any], out: Path) -> list[Path]:
    """kNN per epoch, kNN per minute of training (mean line, min-max band over seeds) and the
    final numbers (mean bars, min-max whiskers)."""
    floor = (result.get("random_init") or {}).get("knn_k20")
    floor_mean = floor["mean"] if floor else None
    per_epoch, per_minute = {}, {}
    for m in result["methods"]:
        c = m["knn_curve"]
        if not c:
            continue
        per_epoch[m["method"]] = [(p["epoch"], p["knn_mean"], p["knn_min"], p["knn_max"])
                                  for p in c]
        if all(p["train_s"] is not None for p in c):
            per_minute[m["method"]] = [(p["train_s"] / 60, p["knn_mean"], p["knn_min"],
                                        p["knn_max"]) for p in c]
    paths = []
    if per_epoch:
        paths.append(plots.knn_bands(per_epoch, out / "knn_per_epoch.png", xlabel="epoch",
                                     floor=floor_mean))
    if per_minute:
        paths.append(plots.knn_bands(per_minute, out / "knn_per_minute.png",
                                     xlabel="minutes of training", floor=floor_mean))
    finals, whiskers = {}, {}
    for name, stats in ([("random init", result["random_init"])] if result.get("random_init")
                        else []) + [(m["method"], m["stats"]) for m in result["methods"]]:
        finals[name] = {k: (stats.get(k) or {}).get("mean") for k in headline(None)}
        whiskers[name] = {k: (stats[k]["min"], stats[k]["max"]) for k in headline(None)
                          if stats.get(k)}
    paths.append(plots.metric_bars(finals, out / "final_metrics.png", ranges=whiskers))
    return paths
