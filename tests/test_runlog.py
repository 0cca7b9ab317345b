"""TensorBoard logging read back with TensorBoard's own reader: curves, pictures, config, resume."""

from __future__ import annotations

import importlib
import io
import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import _cmd, _kill_at_random_step

from ssl_zoo import runlog
from ssl_zoo.cli import main
from ssl_zoo.evaluation import plots


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0,
                                                           "tensors": 0})
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def _jsonl(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _text(acc: EventAccumulator, name: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{name}/text_summary")]


def test_tensorboard_holds_curves_final_pictures_and_config(tmp_path, monkeypatch):
    # t-SNE itself is tested in tests/evaluation; here a cheap 2-D map keeps the run short
    monkeypatch.setattr(plots, "tsne_embedding",
                        lambda feats, **_: np.asarray(feats, dtype=np.float64)[:, :2])
    run = tmp_path / "swav"
    assert main(["train", "--method", "swav", "--dataset", "demo", "--epochs", "1",
                 "--batch-size", "100", "--no-progress", "--out", str(run),
                 "--set", "views.groups.1.count=0", "--set", "train.max_steps=3",
                 "--set", "train.log_every_iters=2", "--set", "eval.linear=false",
                 "--set", "eval.clustering=false", "--set", "eval.baseline=false"]) == 0
    acc = _events(run)
    records = {r["step"]: r for r in _jsonl(run)}
    assert sorted(records) == [2, 3]  # log steps, and the last step
    # every metric of metrics.jsonl, SwAV's collapse monitor included, at the same steps
    for key in ("loss", "lr", "images_per_s", "loss_over_lnK", "prototypes_used",
                "code_entropy", "code_max"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [2, 3], key
        for e in events:
            assert math.isclose(e.value, records[e.step][key], rel_tol=1e-6, abs_tol=1e-7), key
    # the final evaluation's numbers and pictures at the last step
    ev = json.loads((run / "eval.json").read_text())
    top1 = acc.Scalars("final/knn/k20_t0.07/top1")
    assert [e.step for e in top1] == [3]
    assert math.isclose(top1[0].value, ev["knn"]["k20_t0.07"]["top1"], rel_tol=1e-6)
    assert "final/method_clusters/nmi" in acc.Tags()["scalars"]
    for name in ("tsne", "clusters"):
        (img,) = acc.Images(f"final/{name}")
        assert img.step == 3
        with Image.open(run / f"{name}.png") as png, \
                Image.open(io.BytesIO(img.encoded_image_string)) as logged:
            assert logged.size == png.size == (img.width, img.height)
            assert np.array_equal(np.asarray(logged.convert("RGB")),
                                  np.asarray(png.convert("RGB")))
    # the resolved config as text, once, at step 0
    (config_text,) = _text(acc, "config")
    assert json.loads(textwrap.dedent(config_text)) == json.loads(
        (run / "config.json").read_text())
    (info_text,) = _text(acc, "run_info")
    assert json.loads(textwrap.dedent(info_text))["global_batch"] == 100


def test_killed_run_resumes_its_event_files_with_each_step_once(tmp_path, toy_method_file):
    part = tmp_path / "part"
    # checkpoints only at epoch ends (step 20, then the periodic kNN); killed after step 22
    extra = ["--batch-size", "100", "--epochs", "2", "--set", "train.checkpoint_every_iters=0",
             "--set", "train.eval_every_epochs=1"]
    _kill_at_random_step(_cmd(f"{toy_method_file}:Toy", part, extra), part, 23, 34)
    checkpoint = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 20
    before = _steps(_events(part), "train/loss")
    assert before == list(range(1, before[-1] + 1)) and before[-1] > 20  # orphans to drop
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    acc = _events(part)
    assert len(list((part / "tb").glob("events.out.tfevents.*"))) == 2  # same folder, continued
    records = {r["step"]: r for r in _jsonl(part) if "loss" in r}
    for key in ("loss", "lr", "agreement"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == list(range(1, 41)), key  # each step once, in order
        for e in events:
            assert math.isclose(e.value, records[e.step][key], rel_tol=1e-6, abs_tol=1e-7)
    assert _steps(acc, "eval/knn_top1") == [20]  # periodic kNN, kept across the resume
    assert len(_text(acc, "config")) == 1


def test_logger_jsonl_writes_no_event_files(tmp_path, toy_method_file):
    run = tmp_path / "run"
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1",
                 "--batch-size", "100", "--no-progress", "--no-eval", "--out", str(run),
                 "--set", "train.max_steps=2", "--set", "train.logger=jsonl"]) == 0
    assert len(_jsonl(run)) == 1 and not (run / "tb").exists()


@pytest.fixture
def without_tensorboard(monkeypatch):
    """ssl_zoo.runlog as it is where the tensorboard package is not installed."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    importlib.reload(runlog)
    assert not runlog.tensorboard_available()
    yield
    monkeypatch.undo()
    importlib.reload(runlog)
    assert runlog.tensorboard_available()


def test_missing_extra_is_a_one_line_error_and_auto_falls_back(tmp_path, capsys,
                                                               toy_method_file,
                                                               without_tensorboard):
    args = ["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1", "--batch-size",
            "100", "--no-progress", "--no-eval", "--set", "train.max_steps=2"]
    assert main([*args, "--out", str(tmp_path / "tb"), "--set", "train.logger=tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert 'pip install -e ".[tensorboard]"' in err and "train.logger" in err
    assert not (tmp_path / "tb" / "metrics.jsonl").exists()  # stopped before any work
    run = tmp_path / "auto"
    assert main([*args, "--out", str(run)]) == 0  # the default, auto: metrics.jsonl only
    assert len(_jsonl(run)) == 1 and not (run / "tb").exists()


def test_unknown_logger_is_a_config_error(tmp_path, capsys):
    assert main(["train", "--method", "swav", "--out", str(tmp_path / "run"),
                 "--set", "train.logger=tensorbord"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err
