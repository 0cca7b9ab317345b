"""Feature cache, `ssl-zoo eval` and `ssl-zoo compare` end to end on the demo set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from ssl_zoo import load_backbone
from ssl_zoo.checkpoint import safe_load
from ssl_zoo.cli import main
from ssl_zoo.data.sources import open_source
from ssl_zoo.evaluation import features as features_module
from ssl_zoo.evaluation.features import cached_features, extract_features


def numpy_rankme(x: np.ndarray) -> float:
    """RankMe (Garrido et al. 2023, Eq. 1) from numpy's SVD."""
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


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


def slow_knn_top1(run: Path, tmp_path: Path, k: int = 20, temperature: float = 0.07) -> float:
    """kNN top-1 (k=20, T=0.07) of a run's exported backbone, written out plainly: cosine
    similarities in float64, the k nearest training images vote exp(sim / T) for their class,
    the class with most votes (smallest id on a tie) is the prediction."""
    out = tmp_path / f"{run.name}_backbone.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    net = load_backbone(out)
    spec = json.loads((run / "run_info.json").read_text())["view_spec"]
    data = open_source("demo")
    kw = dict(image_size=32, mean=spec["mean"], std=spec["std"], device=torch.device("cpu"))
    train_ds = data.eval_train or data.train
    ftr = F.normalize(extract_features(net, train_ds, **kw).double(), dim=1)
    fte = F.normalize(extract_features(net, data.test, **kw).double(), dim=1)
    ytr, yte = train_ds.labels.tolist(), data.test.labels.tolist()
    num_classes = max(ytr + yte) + 1
    hits = 0
    for q, label in zip(fte, yte):
        sims = (ftr @ q).tolist()
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[ytr[i]] += math.exp(sims[i] / temperature)
        hits += max(range(num_classes), key=lambda c: (votes[c], -c)) == label
    return hits / len(yte)


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
    for m in result["methods"]:  # the reported kNN top-1, recomputed by hand from the weights
        (r,) = m["runs"]  # one seed: the config's
        assert r["seed"] == 0 and m["stats"]["knn_k20"]["mean"] == r["eval"]["knn"][
            "k20_t0.07"]["top1"]
        assert r["eval"]["knn"]["k20_t0.07"]["top1"] == pytest.approx(
            slow_knn_top1(Path(r["run_dir"]), tmp_path), abs=1e-9)
        assert m["stats"]["rankme"]["mean"] == r["eval"]["rankme"]["rank"] > 1.0
    assert "RankMe" in text
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
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long paths anywhere
    assert printed.count("finished run found in") == 2 and "not retrained" in printed


def test_eval_command_on_a_run(tmp_path, monkeypatch, capsys, toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1",
                 "--batch-size", "64", "--no-progress", "--no-eval", "--set",
                 "train.max_steps=2", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--set", "eval.baseline=false"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["knn"]) == {"k20_t0.07", "k200_t0.1"}
    assert 0.0 <= ev["linear"]["test_top1"] <= 1.0 and ev["linear"]["steps"] >= 1000
    # RankMe of the very features the evaluation used, recomputed from numpy's SVD
    (train_file,) = (run / "features").glob("train-*.pt")
    assert ev["rankme"]["rank"] == pytest.approx(
        numpy_rankme(safe_load(train_file).numpy()), rel=1e-4)
    assert (run / "tsne.png").exists() and (run / "loss.png").exists()
    assert "kNN k20_t0.07 top-1" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nope")]) == 2


def test_transfer_eval_uses_the_runs_normalisation_on_the_new_data(tmp_path, monkeypatch,
                                                                  toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1",
                 "--batch-size", "64", "--no-progress", "--no-eval", "--set",
                 "train.max_steps=2", "--out", str(run)]) == 0
    rng = np.random.default_rng(0)  # other data, of another size: 40-px images, 4 classes
    centres = rng.integers(30, 220, (4, 1, 1, 3))
    ytr, yte = rng.integers(0, 4, 160), rng.integers(0, 4, 60)

    def images(y):
        return np.clip(centres[y] + rng.normal(0, 25, (len(y), 40, 40, 3)), 0, 255).astype(
            np.uint8)
    np.savez(tmp_path / "other.npz", x_train=images(ytr), y_train=ytr, x_test=images(yte),
             y_test=yte)
    assert main(["eval", str(run), "--dataset", f"npz:{tmp_path / 'other.npz'}", "--set",
                 "eval.baseline=false", "--set", "eval.pictures=false"]) == 0
    ev = json.loads(next(run.glob("eval_npz*.json")).read_text())
    assert not (run / "eval.json").exists()  # the run's own evaluation is not overwritten
    # the new images are resized to the run's working size (32 px), as transfer from 224-px
    # ImageNet training resizes CIFAR to 224
    assert ev["n_train"] == 160 and ev["n_test"] == 60 and ev["image_size"] == 32
    # independently: the exported backbone, the run's normalisation, the new images
    out = tmp_path / "backbone.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    net = load_backbone(out)
    spec = json.loads((run / "run_info.json").read_text())["view_spec"]
    data = open_source(f"npz:{tmp_path / 'other.npz'}", image_size=32)
    kw = dict(image_size=32, mean=spec["mean"], std=spec["std"], device=torch.device("cpu"))
    ftr = F.normalize(extract_features(net, data.train, **kw).double(), dim=1)
    fte = F.normalize(extract_features(net, data.test, **kw).double(), dim=1)
    sims = fte @ ftr.t()
    top = sims.topk(20, dim=1)
    votes = torch.zeros(60, 4, dtype=torch.float64)
    votes.scatter_add_(1, torch.as_tensor(ytr)[top.indices], (top.values / 0.07).exp())
    hand = float((votes.argmax(1) == torch.as_tensor(yte)).double().mean())
    assert ev["knn"]["k20_t0.07"]["top1"] == pytest.approx(hand, abs=1e-9)
    assert 0.0 <= ev["linear"]["test_top1"] <= 1.0


def test_large_features_are_memory_mapped_and_evaluated_alike(tmp_path, monkeypatch,
                                                              toy_method_file):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    ds = open_source("demo").test
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    kw = dict(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"),
              batch_size=300)  # batches that do not divide the 1000 images
    in_memory = extract_features(net, ds, **kw)
    monkeypatch.setattr(features_module, "MEMMAP_ABOVE_BYTES", 0)
    mapped = cached_features(net, ds, key={"split": "test"}, cache_dir=tmp_path / "f", **kw)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(np.asarray(mapped), in_memory.numpy())
    (only,) = (tmp_path / "f").iterdir()  # no partial file left behind
    stamp = only.stat().st_mtime_ns
    again = cached_features(net, ds, key={"split": "test"}, cache_dir=tmp_path / "f", **kw)
    assert isinstance(again, np.memmap) and only.stat().st_mtime_ns == stamp
    # a whole evaluation on memory-mapped features gives the numbers of in-memory ones
    run = tmp_path / "run"
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--epochs", "1",
                 "--batch-size", "64", "--no-progress", "--no-eval", "--set",
                 "train.max_steps=2", "--out", str(run)]) == 0
    fast = ["--set", "eval.baseline=false", "--set", "eval.pictures=false"]
    assert main(["eval", str(run), *fast]) == 0
    mm = json.loads((run / "eval.json").read_text())
    assert list((run / "features").glob("*.npy"))
    monkeypatch.setattr(features_module, "MEMMAP_ABOVE_BYTES", 2 << 30)
    for f in (run / "features").iterdir():
        f.unlink()
    assert main(["eval", str(run), *fast]) == 0
    mem = json.loads((run / "eval.json").read_text())
    assert not list((run / "features").glob("*.npy"))
    assert mm["knn"] == mem["knn"] and mm["clustering"] == mem["clustering"]
    assert mm["rankme"]["rank"] == pytest.approx(mem["rankme"]["rank"], rel=1e-9)
    assert abs(mm["linear"]["test_top1"] - mem["linear"]["test_top1"]) <= 0.02
