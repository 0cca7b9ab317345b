"""A two-process CLI run (torchrun, gloo) trains, checkpoints and resumes. That every method
under DDP gives what one process gives (2 gloo ranks with batch B each == 1 process with batch
2B) is the conformance kit's check, run for every method in tests/test_conformance.py."""

from __future__ import annotations

import pytest
import torch
from ddp_harness import kill_launcher_and_ranks

from ssl_zoo.testing import TinyNet, compare_one_vs_two, make_inputs


def build_linear_protocol():
    """The paper's linear protocol: a linear layer on a frozen backbone, labels by index."""
    from ssl_zoo.evaluation.supervised import Supervised, SupervisedConfig

    return Supervised(TinyNet(), 24, SupervisedConfig(num_classes=3),
                      labels=torch.arange(8) % 3)


def test_linear_protocol_two_ranks_equal_one_process():
    groups, index = make_inputs(batch=8, sizes=[(1, 8)])
    (losses, state), ranks = compare_one_vs_two(build_linear_protocol, groups, index, 2)
    for r in ranks:
        assert r["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    for key, value in state.items():
        for r in ranks:
            torch.testing.assert_close(r["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_two_process_cli_run_trains_checkpoints_and_resumes(tmp_path, toy_method_file):
    import json
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "ssl_zoo", "train", "--nproc", "2", "--no-progress"]
    common = ["--method", f"{toy_method_file}:Toy", "--batch-size", "32", "--epochs", "2",
              "--no-eval", "--set", "train.log_every_iters=1",
              "--set", "train.checkpoint_every_iters=5", "--set", "train.max_steps=40"]
    proc = subprocess.Popen([*base, *common, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    kill_launcher_and_ranks(proc)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 5 <= state["step"] < 40 and state["world_size"] == 2
    info = json.loads((run / "run_info.json").read_text())
    assert info["global_batch"] == 64 and info["steps_per_epoch"] == 2000 // 64
    out = subprocess.run([*base, "--resume", str(run)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 40
    lines = metrics.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 41))
