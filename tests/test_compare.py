"""`ssl-zoo compare --seeds` and `--minutes`: the numbers in the table, the JSON and the charts
against values recomputed here from each run's own files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo import compare
from ssl_zoo.cli import main
from ssl_zoo.data.sources import open_source

EVAL_OFF = ["--set", "eval.pictures=false", "--set", "eval.linear=false"]


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_spread_against_numpy(values):
    s = compare.spread(values + [None])  # a missing value is skipped
    a = np.asarray(values, dtype=np.float64)
    assert s["n"] == len(values)
    assert s["mean"] == pytest.approx(a.mean(), abs=1e-9)
    assert s["min"] == a.min() and s["max"] == a.max()
    if len(values) == 1:
        assert s["sd"] is None
    else:
        assert s["sd"] == pytest.approx(a.std(ddof=1), abs=1e-6)


def _curve(points):
    return [{"epoch": e, "train_s": t, "knn_top1": k} for e, t, k in points]


def test_mean_curve_closes_with_the_seeds_final_points_when_their_epochs_differ():
    # seed 0: periodic kNN at 4, 8, 12, final at 16; seed 1: periodic at 4, 8, final at 11
    a = _curve([(4, 60.0, 0.30), (8, 120.0, 0.40), (12, 180.0, 0.45), (16, 240.0, 0.50)])
    b = _curve([(4, 70.0, 0.32), (8, 140.0, 0.38), (11, 190.0, 0.44)])
    got = compare.mean_curve([a, b])
    assert [p["epoch"] for p in got] == [4, 8, 13.5]
    assert got[1] == {"epoch": 8, "knn_mean": pytest.approx(0.39), "knn_min": 0.38,
                      "knn_max": 0.40, "train_s": pytest.approx(130.0)}
    assert got[-1]["final"] is True
    assert got[-1]["knn_mean"] == pytest.approx(0.47)
    assert (got[-1]["knn_min"], got[-1]["knn_max"]) == (0.44, 0.50)
    assert got[-1]["train_s"] == pytest.approx(215.0)


def test_mean_curve_of_seeds_ending_together_has_no_extra_point():
    a = _curve([(4, 60.0, 0.30), (8, 120.0, 0.40)])
    b = _curve([(4, 61.0, 0.20), (8, 125.0, 0.50)])
    got = compare.mean_curve([a, b])
    assert [p["epoch"] for p in got] == [4, 8]
    assert "final" not in got[-1]
    assert compare.mean_curve([a, []]) == []


def test_spread_of_nothing_is_none():
    assert compare.spread([None, None]) is None


@pytest.mark.parametrize("minutes,ips,spe,batch,expected", [
    (1.0, 100.0, 10, 50, 12),     # 6,000 images = 12 epochs of 500
    (0.5, 100.0, 10, 50, 6),
    (0.01, 100.0, 10, 50, 1),     # less than one epoch of time still trains one
    (2.0, 33.0, 7, 64, 9),        # 3,960 / 448 = 8.84 -> 9 (nearest whole epoch)
])
def test_epochs_for_a_time_budget(minutes, ips, spe, batch, expected):
    assert compare.epochs_for(minutes, ips, spe, batch) == expected


def test_epochs_for_counts_a_per_epoch_hook():
    # 500 images at 100/s = 5 s an epoch, plus 5 s of clustering = 10 s: 60 s hold 6 epochs
    assert compare.epochs_for(1.0, 100.0, 10, 50, epoch_start_s=5.0) == 6


def test_bad_seeds_and_minutes_are_one_line_errors(capsys):
    base = ["compare", "--methods", "simclr", "--dataset", "demo", "--dry-run"]
    for extra, words in ([["--seeds", "0,x"], "--seeds"], [["--seeds", "1,1"], "twice"],
                         [["--minutes", "0"], "--minutes"],
                         [["--minutes", "1", "--epochs", "2"], "one budget"]):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1


def _record_charts(monkeypatch):
    """Keep what the charts were drawn from (the real drawing still runs)."""
    seen = {"bands": {}, "bars": None}
    bands, bars = compare.plots.knn_bands, compare.plots.metric_bars

    def knn_bands(curves, path, **kw):
        seen["bands"][Path(path).name] = {k: list(v) for k, v in curves.items()}
        return bands(curves, path, **kw)

    def metric_bars(finals, path, **kw):
        seen["bars"] = (finals, kw.get("ranges"))
        return bars(finals, path, **kw)

    monkeypatch.setattr(compare.plots, "knn_bands", knn_bands)
    monkeypatch.setattr(compare.plots, "metric_bars", metric_bars)
    return seen


def _knn_points(run_dir: Path) -> list[tuple[int, float, float]]:
    """(epoch, training seconds, kNN top-1) read back from the run's own files."""
    pts = [(r["epoch"], r["train_s"], r["knn_top1"])
           for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
           if "knn_top1" in r]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    final = json.loads((run_dir / "eval.json").read_text())["knn"]["k20_t0.07"]["top1"]
    return pts + [(summary["epochs"], summary["train_s"], final)]


def test_compare_with_seeds_reports_mean_and_spread(tmp_path, monkeypatch, capsys,
                                                    toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    seen = _record_charts(monkeypatch)
    out = tmp_path / "cmp"
    toy = f"{toy_method_file}:Toy"
    assert main(["compare", "--methods", f"simclr,{toy}", "--dataset", "demo", "--epochs", "2",
                 "--batch-size", "250", "--seeds", "0,1", "--out", str(out), *EVAL_OFF]) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "comparison.json").read_text())
    assert result["budget"]["seeds"] == [0, 1] and result["budget"]["epochs"] == 2
    assert "mean ± sd over seeds 0,1" in text
    finals, ranges = seen["bars"]
    for entry, name in zip(result["methods"], ["simclr", "toy_method"]):
        assert entry["seeds"] == [0, 1]
        dirs = [out / name / f"seed{s}" for s in (0, 1)]
        assert [Path(r["run_dir"]) for r in entry["runs"]] == dirs
        evals = [json.loads((d / "eval.json").read_text()) for d in dirs]
        assert evals[0] != evals[1]  # two seeds, two different runs
        for key, path in (("knn_k20", ("knn", "k20_t0.07", "top1")),
                          ("nmi", ("clustering", "nmi"))):
            vals = [e[path[0]][path[1]][path[2]] if len(path) == 3 else e[path[0]][path[1]]
                    for e in evals]
            s = entry["stats"][key]
            assert s["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
            assert s["sd"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
            assert (s["min"], s["max"]) == (min(vals), max(vals))
            # the table row shows mean ± sd, the bar chart the mean with min-max whiskers
            assert f"{s['mean']:.3f} ± {s['sd']:.3f}" in text
            assert finals[entry["method"]][key] == pytest.approx(np.mean(vals))
            assert ranges[entry["method"]][key] == (min(vals), max(vals))
        # the per-epoch chart: at every evaluated epoch, the mean and min-max over seeds
        points = [_knn_points(d) for d in dirs]
        assert [p[0] for p in points[0]] == [1, 2]
        drawn = seen["bands"]["knn_per_epoch.png"][entry["method"]]
        minute = seen["bands"]["knn_per_minute.png"][entry["method"]]
        for i, (epoch, mean, lo, hi) in enumerate(drawn):
            ks = [p[i][2] for p in points]
            assert epoch == i + 1 and mean == pytest.approx(np.mean(ks))
            assert (lo, hi) == (min(ks), max(ks))
            assert minute[i][0] == pytest.approx(np.mean([p[i][1] for p in points]) / 60)
            assert minute[i][1:] == drawn[i][1:]
        assert 0 < points[0][0][1] < points[0][1][1]  # training seconds grow with epochs
    # random init: one per seed (it depends on the seed, not the method)
    floors = [json.loads((out / "simclr" / f"seed{s}" / "eval.json").read_text())
              ["random_init"]["knn"]["k20_t0.07"]["top1"] for s in (0, 1)]
    assert result["random_init"]["knn_k20"]["mean"] == pytest.approx(np.mean(floors))
    assert "random init" in text
    for png in ("knn_per_epoch.png", "knn_per_minute.png", "final_metrics.png"):
        assert (out / png).stat().st_size > 1000


def _small_npz(path: Path, n_train: int = 256, n_test: int = 128) -> Path:
    d = open_source("demo")
    x = lambda ds, n: ds.images[:n].permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez(path, x_train=x(d.train, n_train), y_train=d.train.labels[:n_train].numpy(),
             x_test=x(d.test, n_test), y_test=d.test.labels[:n_test].numpy())
    return path


def test_compare_with_minutes_gives_every_method_the_same_time(tmp_path, monkeypatch, capsys,
                                                               toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    npz = _small_npz(tmp_path / "small.npz")
    out = tmp_path / "cmp"
    minutes = 0.05
    common = ["compare", "--methods", f"simclr,{toy_method_file}:Toy", "--dataset",
              f"npz:{npz}", "--batch-size", "32", "--out", str(out), *EVAL_OFF,
              "--set", "eval.clustering=false"]
    args = [*common, "--minutes", str(minutes)]
    assert main(args) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "comparison.json").read_text())
    assert result["budget"]["minutes"] == minutes and "epochs" not in result["budget"]
    assert f"{minutes:g} minutes of training per method" in text
    epochs = {}
    for entry, name in zip(result["methods"], ["simclr", "toy_method"]):
        run_dir = out / name
        budget = json.loads((run_dir / "budget.json").read_text())
        assert budget["steps_per_epoch"] == 256 // 32 and budget["global_batch"] == 32
        epoch_s = 256 / budget["measured_images_per_s"] + budget["epoch_start_s"]
        want = max(1, round(minutes * 60 / epoch_s))
        assert budget["epochs"] == want
        summary = json.loads((run_dir / "train_summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        assert summary["epochs"] == config["train"]["epochs"] == want  # the schedule's length
        assert entry["stats"]["epochs"]["mean"] == want
        assert entry["stats"]["train_s"]["mean"] == pytest.approx(summary["train_s"])
        epochs[name] = want
    # a second call finds both runs finished and keeps their epochs (no new timing)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("not retrained") == 2 and "timing" not in printed
    # the same --out with another budget is refused, in one line
    assert main([*common, "--minutes", "0.1"]) == 2
    assert "budgeted at 0.05 minutes" in capsys.readouterr().err
    assert all(e >= 1 for e in epochs.values())


def test_training_seconds_exclude_periodic_evaluation_and_survive_resume(tmp_path, monkeypatch):
    from ssl_zoo.assemble import resolve
    from ssl_zoo.evaluation.run import RunEvaluation
    from ssl_zoo.train import Trainer

    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    npz = _small_npz(tmp_path / "small.npz")
    sets = [f"dataset=npz:{npz}", "train.batch_size=64", "train.eval_every_epochs=1",
            "eval.enabled=false", "train.logger=jsonl"]
    run = resolve({}, [*sets, "train.epochs=3"], method="simclr")
    run_dir = tmp_path / "run"
    evaluation = RunEvaluation(run.data, run.view_spec, run.config, run_dir)
    slow = evaluation.periodic

    def periodic(backbone, device):  # an evaluation that takes a known 0.5 s
        import time
        time.sleep(0.5)
        return slow(backbone, device)

    evaluation.periodic = periodic
    first = Trainer(with_max_steps(run, 2 * 4), run_dir, show_progress=False,
                    evaluation=evaluation)
    first.fit()
    part = json.loads((run_dir / "train_summary.json").read_text())
    assert part["epochs"] == 2
    # two periodic evaluations (after epochs 1 and 2) happened inside the first segment
    assert part["train_s"] <= part["wall_s"] - 1.0
    from ssl_zoo.checkpoint import load_latest_checkpoint
    # the resumed run starts from the seconds its checkpoint holds (written at epoch 2's end,
    # after that epoch's evaluation, whose time is not counted; what came after it, the
    # loader's shutdown, is not carried)
    saved_s = load_latest_checkpoint(run_dir, warn=lambda _: None)[0]["train_seconds"]
    assert 0 < saved_s <= part["train_s"]
    resumed = Trainer(run, run_dir, resume=True, show_progress=False, evaluation=evaluation)
    resumed.fit()
    whole = json.loads((run_dir / "train_summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if "knn_top1" in r]
    assert [r["epoch"] for r in knn] == [1, 2]
    assert 0 < knn[0]["train_s"] < knn[1]["train_s"] < whole["train_s"]
    # the resumed segment adds its own seconds to the checkpoint's: no periodic evaluation after
    # the last epoch, and the final evaluation is not timed either, so all of its wall time
    # counts (both are read at the same instant: no machine-speed tolerance needed)
    assert whole["train_s"] == pytest.approx(saved_s + whole["wall_s"], abs=1e-3)
    # epoch 2's evaluation was read before its checkpoint (so a resumed run never loses it)
    assert knn[1]["train_s"] <= saved_s <= part["train_s"]
    assert not math.isnan(whole["train_s"])


def with_max_steps(run, steps):
    return compare.with_train(run, max_steps=steps)


def test_the_timed_warm_up_includes_a_per_epoch_hook(tmp_path, monkeypatch):
    """A method that works at every epoch start (as PCL clusters) is timed with that work, so
    ``--minutes`` does not overrun for it."""
    from conftest import TOY_METHOD

    from ssl_zoo.assemble import resolve

    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "slow_method.py"
    path.write_text(TOY_METHOD + '''
import time


class SlowEpochs(Toy):
    name = "slow_epochs"

    def on_epoch_start(self, ctx):
        if ctx.epoch >= 1:  # after a warm-up epoch, as PCL
            time.sleep(0.3)
''')
    npz = _small_npz(tmp_path / "small.npz")
    sets = [f"dataset=npz:{npz}", "train.batch_size=32", "train.logger=jsonl"]
    plain = compare.measure_speed(resolve({}, sets, method=f"{path}:Toy"))
    slow = compare.measure_speed(resolve({}, sets, method=f"{path}:SlowEpochs"))
    assert plain[3] < 0.3 <= slow[3]
    ips, spe, batch, hook = slow
    assert compare.epochs_for(1.0, ips, spe, batch, hook) < compare.epochs_for(1.0, ips, spe,
                                                                                 batch)
