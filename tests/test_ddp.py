"""Every method under DDP: 2 gloo ranks with batch B each == 1 process with batch 2B."""

from __future__ import annotations

import pytest
import torch
from ddp_harness import TinyNet, compare_one_vs_two, kill_launcher_and_ranks, make_inputs


def build_swav():
    from ssl_zoo_methods.swav import SwAV, SwAVConfig

    return SwAV(TinyNet(), 24, SwAVConfig(num_prototypes=12, feat_dim=8, hidden_dim=16,
                                          queue_length=16, queue_start_epoch=0))


def build_simclr():
    from ssl_zoo_methods.simclr import SimCLR, SimCLRConfig

    return SimCLR(TinyNet(), 24, SimCLRConfig())


def build_moco():
    from ssl_zoo_methods.moco import MoCo, MoCoConfig

    return MoCo(TinyNet(), 24, MoCoConfig(queue_length=24, proj_dim=8, shuffle_bn_groups=1))


def build_pcl():
    from ssl_zoo_methods.pcl import PCL, PCLConfig

    return PCL(TinyNet(), 24, PCLConfig(queue_length=24, proj_dim=8, shuffle_bn_groups=1,
                                        warmup_epochs=0, num_clusters=(2, 3),
                                        num_negative_prototypes=1))


def build_dino():
    from ssl_zoo_methods.dino import DINO, DINOConfig

    return DINO(TinyNet(), 24, DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8))


def build_byol():
    from ssl_zoo_methods.byol import BYOL, BYOLConfig

    return BYOL(TinyNet(), 24, BYOLConfig(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16))


CASES = {
    "swav": (build_swav, [(2, 8), (2, 4)], 4),
    "simclr": (build_simclr, [(2, 8)], 2),
    "moco": (build_moco, [(2, 8)], 3),
    "pcl": (build_pcl, [(2, 8)], 2),
    # two global crops (one group each, as the default views) and two local ones; the centre
    # is all-reduced, the last layer frozen at step 0 (the harness's epoch 0)
    "dino": (build_dino, [(1, 8), (1, 8), (2, 4)], 3),
    "byol": (build_byol, [(1, 8), (1, 8)], 3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(name):
    build, sizes, steps = CASES[name]
    groups, index = make_inputs(batch=8, sizes=sizes)
    (losses, state), ranks = compare_one_vs_two(build, groups, index, steps)
    for r in ranks:
        assert r["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    for key, value in state.items():
        if value.dtype.is_floating_point:
            for r in ranks:
                torch.testing.assert_close(r["state"][key], value, rtol=1e-4, atol=1e-5,
                                           msg=f"{name}: {key}")
        else:
            for r in ranks:
                assert torch.equal(r["state"][key], value), f"{name}: {key}"


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
