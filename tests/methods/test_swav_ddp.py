"""SwAV on two gloo processes (CPU) gives what one process gives on the whole batch:
the distributed Sinkhorn codes, and the full method's loss, codes and averaged gradients with a
queue (batch norm in eval mode: per-rank batch statistics would differ without SyncBN)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_harness import kill_launcher_and_ranks
from torch import nn

from ssl_zoo.data.views import Views
from ssl_zoo.method import TrainContext
from ssl_zoo.modules.distributed import all_reduce_mean
from ssl_zoo_methods.swav import SwAV, SwAVConfig, sinkhorn

WORLD = 2
BATCH = 8  # global
STEPS = 3  # the queue (2 global batches less one row) is full from the third step on


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def build_model() -> SwAV:
    # an odd queue length: the ranks hold unequal shares of it (8 and 7 rows)
    cfg = SwAVConfig(num_prototypes=10, feat_dim=8, hidden_dim=16, epsilon=0.05,
                     queue_length=2 * BATCH - 1, queue_start_epoch=0, collapse_patience_iters=0)
    model = SwAV(SmallNet(), 16, cfg)
    for m in model.modules():  # the module stays in training mode (it fills its queue)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def run_steps(model: SwAV, steps: list[list[torch.Tensor]], part=lambda t: t) -> list[dict]:
    """Forward + backward of each step's crops; the loss, codes, metrics and gradients
    (averaged over ranks, as DDP would) of each step. No optimiser: the weights stay put."""
    out = []
    for i, crops in enumerate(steps):
        res = model(Views.from_crops([part(c) for c in crops]))
        res.loss.backward()
        grads = {n: all_reduce_mean(p.grad.detach().clone())
                 for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        model.after_optimizer_step(TrainContext(step=i))  # the batch enters the queue
        codes = torch.stack([res.debug["codes_0"], res.debug["codes_1"]])
        out.append({"loss": res.loss.detach(), "codes": codes,
                    "queue_in_use": res.metrics["queue_in_use"], "grads": grads})
    return out


def _worker(rank: int, tmp: str, payload: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=WORLD)
    try:
        scores, cut = payload["scores"], payload["cut"]
        mine = scores[:cut] if rank == 0 else scores[cut:]  # unequal shares on purpose
        result = {
            "codes32": sinkhorn(mine, 0.05, 3),
            "codes64": sinkhorn(mine.double(), 0.05, 3, use_float64=True),
            # a large offset on one rank only: the shifts must agree across ranks
            "codes_shifted": sinkhorn(mine + (30.0 if rank == 0 else 0.0), 0.01, 3),
            # rows left out (queue slots without an embedding) on both ranks
            "codes_masked": sinkhorn(mine, 0.05, 3, valid=(payload["valid"][:cut] if rank == 0
                                                           else payload["valid"][cut:])),
        }
        model = build_model()
        model.load_state_dict(payload["state"])
        result["steps"] = run_steps(model, payload["steps"],
                                    part=lambda t: t.chunk(WORLD)[rank])
        torch.save(result, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(11, 7, generator=g) * 2 - 1
    torch.manual_seed(0)
    model = build_model()
    steps = [[torch.randn(BATCH, 3, 16, 16, generator=g) for _ in range(2)]
             + [torch.randn(BATCH, 3, 8, 8, generator=g) for _ in range(2)]
             for _ in range(STEPS)]
    valid = torch.tensor([True, False, True, True, False, True, True, True, False, True, True])
    payload = {"scores": scores, "cut": 4, "state": model.state_dict(), "steps": steps,
               "valid": valid}
    mp.spawn(_worker, args=(str(tmp_path), payload), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # Sinkhorn: ranks holding 4 and 7 rows = one process holding all 11
    torch.testing.assert_close(torch.cat([r["codes32"] for r in ranks]),
                               sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([r["codes64"] for r in ranks]),
                               sinkhorn(scores.double(), 0.05, 3, use_float64=True),
                               rtol=1e-12, atol=1e-14)
    shifted = torch.cat([scores[:4] + 30.0, scores[4:]])
    torch.testing.assert_close(torch.cat([r["codes_shifted"] for r in ranks]),
                               sinkhorn(shifted, 0.01, 3), rtol=1e-4, atol=1e-6)

    torch.testing.assert_close(torch.cat([r["codes_masked"] for r in ranks]),
                               sinkhorn(scores, 0.05, 3, valid=valid), rtol=1e-5, atol=1e-7)

    # the method: each rank half the batch (and its slice of the shared queue)
    reference = run_steps(model, steps)
    for step, ref in enumerate(reference):
        got = [r["steps"][step] for r in ranks]
        assert ref["queue_in_use"] == got[0]["queue_in_use"] == float(step == STEPS - 1)
        torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, ref["loss"],
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat([x["codes"] for x in got], dim=1), ref["codes"],
                                   rtol=1e-4, atol=1e-6)
        assert set(got[0]["grads"]) == set(ref["grads"])
        for name, grad in ref["grads"].items():
            torch.testing.assert_close(got[0]["grads"][name], grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got[1]["grads"][name], grad, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# resume with another number of processes (through the CLI)
# --------------------------------------------------------------------------------------------
QUEUE = 30  # a multiple of the global batch of 1 process (10), not of 2 processes (20)
PER_PROCESS = 10
STEPS_TOTAL = 20
LR_PER_256, WARMUP_EPOCHS = 0.5, 0.05


def _train(run, nproc: int, resume: bool, kill_after_lines: int = 0):
    import subprocess
    import sys
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "ssl_zoo", "train", "--nproc", str(nproc), "--no-progress"]
    if resume:
        cmd += ["--resume", str(run)]
    else:
        cmd += ["--method", "swav", "--dataset", "demo", "--backbone", "convnet_w0.25",
                "--batch-size", str(PER_PROCESS), "--epochs", "1", "--no-eval", "--out", str(run),
                "--set", f"train.max_steps={STEPS_TOTAL}", "--set", "train.log_every_iters=1",
                "--set", "train.checkpoint_every_iters=4", "--set", "train.optimizer=sgd",
                "--set", f"train.lr_per_256={LR_PER_256}",
                "--set", f"train.warmup_epochs={WARMUP_EPOCHS}",
                "--set", "method.num_prototypes=20", "--set", "views.groups.1.count=2",
                "--set", f"method.queue_length={QUEUE}", "--set", "method.queue_start_epoch=0"]
    if not kill_after_lines:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after_lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    kill_launcher_and_ranks(proc)


def _lr(step: int, global_batch: int) -> float:
    """Linear warm-up, then cosine to 0 on the last iteration; peak lr_per_256 x batch / 256."""
    import math

    peak = LR_PER_256 * global_batch / 256
    warmup = round(WARMUP_EPOCHS * (2000 // global_batch))
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (STEPS_TOTAL - 1 - warmup)))


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes_keeps_the_queue(tmp_path, before, after):
    import json

    run = tmp_path / "run"
    _train(run, before, resume=False, kill_after_lines=10)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    done, model = saved["step"], saved["model"]
    assert saved["world_size"] == before and 4 <= done < STEPS_TOTAL
    assert int(model["queues.0.filled"]) == QUEUE  # full before the interruption

    _train(run, after, resume=True)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert final["step"] == STEPS_TOTAL and final["world_size"] == after
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS_TOTAL + 1))
    resumed = [r for r in records if r["step"] > done]
    # the queue came back full (a restarted queue would be out of use for the first steps) ...
    assert all(r["queue_in_use"] == 1.0 for r in resumed)
    # ... and went on from the checkpoint's write position, a new global batch per step
    for j in range(2):
        ptr = (int(model[f"queues.{j}.ptr"]) + (STEPS_TOTAL - done) * after * PER_PROCESS) % QUEUE
        assert int(final["model"][f"queues.{j}.ptr"]) == ptr
        assert int(final["model"][f"queues.{j}.filled"]) == QUEUE
    # the lr follows the schedule of each run's global batch (lr_per_256 x global batch / 256)
    for r in records:
        world = before if r["step"] <= done else after
        assert r["lr"] == pytest.approx(_lr(r["step"] - 1, world * PER_PROCESS), rel=1e-9)
