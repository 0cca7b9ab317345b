"""A two-process CLI run (torchrun, gloo) trains, checkpoints and resumes. That every method
under DDP gives what one process gives (2 gloo ranks with batch B each == 1 process with batch
2B) is the conformance kit's check, run for every method in tests/test_conformance.py."""

from __future__ import annotations

import torch
from ddp_harness import kill_launcher_and_ranks


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
