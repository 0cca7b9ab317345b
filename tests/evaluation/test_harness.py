"""Feature cache, `ssl-zoo eval` and `ssl-zoo compare` end to end on the demo set."""

from __future__ import annotations

import json

import torch
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from ssl_zoo.cli import main
from ssl_zoo.data.sources import open_source
from ssl_zoo.evaluation.features import cached_features


def test_feature_cache_is_reused_and_invalidated(tmp_path):
    ds = open_source("demo").test
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    kw = dict(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"))
    a = cached_features(net, ds, key={"split": "test"}, cache_dir=tmp_path, **kw)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and a.shape == (len(ds), 4)
    stamp = files[0].stat().st_mtime_ns
    b = cached_features(net, ds, key={"split": "test"}, cache_dir=tmp_path, **kw)
    assert torch.equal(a, b) and files[0].stat().st_mtime_ns == stamp  # read, not recomputed
    with torch.no_grad():
        net[0].weight.add_(1.0)  # a changed checkpoint
    c = cached_features(net, ds, key={"split": "test"}, cache_dir=tmp_path, **kw)
    assert not torch.allclose(a, c) and len(list(tmp_path.iterdir())) == 2


def test_compare_two_methods_writes_table_json_and_charts(tmp_path, monkeypatch, capsys,
                                                          toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    out = tmp_path.joinpath(*[f"a-long-folder-name-{i}" for i in range(8)], "cmp")
    args = ["compare", "--methods", f"simclr,{toy_method_file}:Toy", "--dataset", "demo",
            "--epochs", "1", "--batch-size", "64", "--out", str(out),
            "--set", "train.max_steps=3", "--set", "eval.pictures=false",
            "--set", "eval.linear=false"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "random init" in text and "simclr" in text
    result = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in result["methods"]] == ["simclr", f"{toy_method_file}:Toy"]
    for r in result["methods"]:
        assert 0 <= r["eval"]["knn"]["k20_t0.07"]["top1"] <= 1
    with Image.open(out / "final_metrics.png") as im:
        assert im.size[0] > 100
    # one TensorBoard run per method, so `tensorboard --logdir OUT` overlays them
    runs = EventMultiplexer().AddRunsFromDirectory(str(out))
    runs.Reload()
    assert set(runs.Runs()) == {"simclr/tb", "toy_method/tb"}
    for name in runs.Runs():
        assert [e.step for e in runs.Scalars(name, "train/loss")] == [3]
        assert [e.step for e in runs.Scalars(name, "final/knn/k20_t0.07/top1")] == [3]
    # an interrupted / repeated compare does not retrain finished runs
    assert main(args) == 0
    assert "not retrained" in capsys.readouterr().out


def test_eval_command_on_a_run(tmp_path, monkeypatch, capsys, toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1",
                 "--batch-size", "64", "--no-progress", "--no-eval", "--set",
                 "train.max_steps=2", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--set", "eval.linear=false", "--set",
                 "eval.baseline=false"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["knn"]) == {"k20_t0.07", "k200_t0.1"}
    assert (run / "tsne.png").exists() and (run / "loss.png").exists()
    assert "kNN k20_t0.07 top-1" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nope")]) == 2
