"""The CLI end to end on the embedded demo set, with a user's own method from a file."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_zoo.cli import main
from ssl_zoo.train import Trainer


def _train(args, capsys=None):
    code = main(["train", "--no-progress", *args])
    return code


def test_list_shows_methods_backbones_and_sources(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("swav", "simclr", "moco", "pcl", "convnet", "resnet18", "demo", "npz"):
        assert name in out


@pytest.mark.parametrize("args, message", [
    (["--method", "swaw"], "did you mean 'swav'"),
    (["--method", "swav", "--backbone", "resnet81"], "did you mean 'resnet18'"),
    (["--method", "swav", "--dataset", "cifar11"], "did you mean"),
    (["--method", "swav", "--set", "train.epochs=many"], "train.epochs: expected an integer"),
    (["--method", "swav", "--set", "num_prototype=3"], "did you mean 'num_prototypes'"),
    (["--method", "swav", "--config", "/nonexistent/run.yaml"], "config file not found"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    code = _train([*args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_toy_method_from_file_trains_checkpoints_and_resumes(tmp_path, toy_method_file, capsys,
                                                             monkeypatch):
    common = ["--method", f"{toy_method_file}:Toy", "--dataset", "demo", "--batch-size", "64",
              "--epochs", "2", "--no-eval", "--set", "train.checkpoint_every_iters=10"]
    full = tmp_path / "full"
    assert _train([*common, "--out", str(full)]) == 0
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["train"]["batch_size"] == 64
    assert cfg["method_config"] == {"out_dim": 16, "fail_at_step": -1}  # defaults included
    lines = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 62 and all("loss" in x and "lr" in x for x in lines)
    assert "final loss" in capsys.readouterr().out

    # interrupt a second run mid-epoch (after iteration 25; last checkpoint at 20), then resume
    original = Trainer._train_step

    def interrupted(self, images, index, sizes=None):
        if self.step == 25:
            raise KeyboardInterrupt
        return original(self, images, index, sizes)

    part = tmp_path / "part"
    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    assert _train([*common, "--out", str(part)]) == 130
    assert "--resume" in capsys.readouterr().out
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=True)["step"] == 20
    # the same directory again without --resume is refused, with the way forward
    assert _train([*common, "--out", str(part)]) == 2
    assert "--resume" in capsys.readouterr().err
    # resuming with a different config names the differing field
    assert _train(["--resume", str(part), "--batch-size", "32"]) == 2
    assert "train.batch_size (64 -> 32)" in capsys.readouterr().err
    assert _train(["--resume", str(part)]) == 0
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 62
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    metrics_a = [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
                 for x in (full / "metrics.jsonl").read_text().splitlines()]
    metrics_b = [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
                 for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert metrics_a == metrics_b


def test_run_written_before_a_new_field_still_resumes(tmp_path, toy_method_file, capsys):
    run = tmp_path / "old"
    assert _train(["--method", f"{toy_method_file}:Toy", "--batch-size", "100", "--epochs", "1",
                   "--no-eval", "--set", "train.max_steps=2", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["logger"]  # as written before train.logger existed
    (run / "config.json").write_text(json.dumps(saved))
    assert _train(["--resume", str(run)]) == 0, capsys.readouterr().err
    # a field given explicitly against the old run's (default) value is still a difference
    assert _train(["--resume", str(run), "--set", "train.logger=jsonl"]) == 2
    assert "train.logger ('auto' -> 'jsonl')" in capsys.readouterr().err


def test_nonfinite_loss_stops_cleanly(tmp_path, toy_method_file, capsys):
    run = tmp_path / "nan"
    code = _train(["--method", f"{toy_method_file}:Toy", "--batch-size", "64", "--epochs", "1",
                   "--no-eval", "--set", "method.fail_at_step=3", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite at iteration 3" in err
    dump = torch.load(run / "nonfinite_step3.pt", weights_only=True)
    assert "z0" in dump["method_debug"]
    # with a skip budget the run goes on
    run2 = tmp_path / "nan2"
    code = _train(["--method", f"{toy_method_file}:Toy", "--batch-size", "64", "--epochs", "1",
                   "--no-eval", "--set", "method.fail_at_step=29", "--skip-nonfinite", "5",
                   "--out", str(run2)])
    assert code == 0
