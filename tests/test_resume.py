"""Runs that survive: SIGKILL at a random iteration, then --resume, ends bit-identical (the
conformance kit's check, ssl_zoo/testing.py; every method passes it in
tests/test_conformance.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ssl_zoo.cli import main
from ssl_zoo.testing import kill_and_resume_equals_uninterrupted as _kill_and_resume
from ssl_zoo.testing import kill_at_random_step, logged_records, train_command


def _cmd(method: str, out: Path, extra: list[str]) -> list[str]:
    return train_command(method, out, ["--dataset", "demo", *extra])


def _metrics(run: Path) -> list[dict]:
    return logged_records(run)


def _kill_at_random_step(cmd: list[str], run: Path, low: int, high: int) -> int:
    return kill_at_random_step(cmd, run, low, high)


def kill_and_resume_equals_uninterrupted(tmp_path: Path, method: str, extra: list[str],
                                         total_steps: int) -> None:
    """The conformance kit's check (ssl_zoo/testing.py) on the demo set."""
    _kill_and_resume(tmp_path, method, ["--dataset", "demo", *extra], total_steps)


def test_toy_method_survives_sigkill(tmp_path, toy_method_file):
    kill_and_resume_equals_uninterrupted(
        tmp_path, f"{toy_method_file}:Toy",
        ["--batch-size", "100", "--epochs", "2"], total_steps=40)


def test_views_made_in_the_workers_survive_sigkill(tmp_path):
    """A CPU run from a prepared store makes its crops in the loader's workers (the default
    there); resumed mid-epoch, its workers start at the right step's crops."""
    import numpy as np
    from PIL import Image

    from ssl_zoo.data.prepared import prepare

    rng = np.random.default_rng(0)
    for i in range(40):
        h, w = [(30, 40), (40, 30), (12, 24)][i % 3]
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    prepare(f"folder:{tmp_path / 'imgs'}", tmp_path / "store", canvas=18, workers=0,
            show_progress=False)
    kill_and_resume_equals_uninterrupted(
        tmp_path, "moco",
        ["--dataset", f"prepared:{tmp_path / 'store'}", "--batch-size", "8", "--epochs", "4",
         "--set", "image_size=16", "--set", "train.num_workers=2",
         "--set", "method.queue_length=16", "--set", "method.shuffle_bn_groups=2"],
        total_steps=20)
    info = json.loads((tmp_path / "part" / "run_info.json").read_text())
    assert info["views_made_in"] == "workers"  # train.views_in=auto chose the workers


def test_export_loads_into_torchvision_strictly(tmp_path, toy_method_file):
    import torchvision
    from torch import nn

    from ssl_zoo import load_backbone

    run = tmp_path / "r18"
    assert main(["train", "--method", f"{toy_method_file}:Toy", "--backbone", "resnet18",
                 "--batch-size", "16", "--epochs", "1", "--no-eval", "--no-progress",
                 "--set", "train.max_steps=1", "--out", str(run)]) == 0
    out = tmp_path / "backbone.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    assert not any(k.startswith(("module.", "backbone.", "head.")) for k in sd)
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem of a 32-px run
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.load_state_dict(sd, strict=True)
    again = load_backbone(out)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(again(x), model(x))
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(sd["conv1.weight"], trained["backbone.conv1.weight"])


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path,
                                                                          toy_method_file,
                                                                          capsys):
    run = tmp_path / "run"
    args = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100", "--epochs", "1",
            "--no-eval", "--no-progress", "--set", "train.log_every_iters=1"]
    assert main(["train", *args, "--out", str(run)]) == 0
    full = _metrics(run)
    shutil.rmtree(run / "checkpoints")  # as if killed before the first checkpoint
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "no checkpoint yet; starting from the beginning" in capsys.readouterr().out
    assert _metrics(run) == full

