"""Runs that survive a cluster (issue #28): a signal stops a run cleanly at a step boundary with
a checkpoint there, ``--resume auto`` continues it bit-identically, a second signal cannot
damage the checkpoint, SLURM requeue, time-based checkpoints."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch

import ssl_zoo.train as train_module
from ssl_zoo.checkpoint import atomic_torch_save, load_latest_checkpoint, safe_load
from ssl_zoo.cli import main
from ssl_zoo.preemption import EXIT_STOPPED, StopRequest, slurm_job_id

SWAV_QUEUE = ["--method", "swav", "--batch-size", "64", "--set", "method.queue_length=128",
              "--set", "method.queue_start_epoch=0", "--set", "method.num_prototypes=32"]
MOCO = ["--method", "moco", "--batch-size", "64", "--set", "method.queue_length=256"]


def _args(method_args: list[str], out: Path, *extra: str) -> list[str]:
    """A tiny run: demo data, 10 steps inside the first epoch (2,000 / 64 = 31 per epoch)."""
    return ["train", *method_args, "--dataset", "demo", "--epochs", "2", "--no-eval",
            "--no-progress", "--set", "train.max_steps=10", "--set", "train.log_every_iters=1",
            "--out", str(out), "--resume", "auto", *extra]


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run: Path, name: str = "last.pt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def _signal_during_step(monkeypatch, at_step: int, signum: int, times: int = 1) -> None:
    """Send ``signum`` to this process while the step of index ``at_step`` runs (after its
    optimiser update), as a cluster would at any moment."""
    original = train_module.Trainer._train_step

    def step(self, *a, **k):
        result = original(self, *a, **k)
        if self.step == at_step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(train_module.Trainer, "_train_step", step)


def _assert_same_end(a: Path, b: Path) -> None:
    sa, sb = _ckpt(a), _ckpt(b)
    assert sa["step"] == sb["step"]
    for key in sa["model"]:  # SwAV's and MoCo's queues are buffers of the model
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for (ka, va), (_, vb) in zip(sa["optimizer"]["state"].items(),
                                  sb["optimizer"]["state"].items()):
        for name in va:
            assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name])), (ka, name)
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert _metrics(a) == _metrics(b)


@pytest.mark.parametrize("method_args,signum", [(SWAV_QUEUE, signal.SIGTERM),
                                                (MOCO, signal.SIGUSR1)],
                         ids=["swav-queue-SIGTERM", "moco-SIGUSR1"])
def test_a_signalled_run_stops_after_its_step_and_resume_auto_ends_bit_identical(
        tmp_path, monkeypatch, capsys, method_args, signum):
    full, part = tmp_path / "full", tmp_path / "part"
    handler_before = signal.getsignal(signum)
    assert main(_args(method_args, full)) == 0  # --resume auto on a missing dir: a fresh start
    with monkeypatch.context() as m:
        _signal_during_step(m, at_step=4, signum=signum)  # the 5th step, mid-epoch
        assert main(_args(method_args, part)) == EXIT_STOPPED
    out = capsys.readouterr().out
    assert f"stopped by {signal.Signals(signum).name} at iteration 5" in out
    assert _ckpt(part)["step"] == 5 and _ckpt(part)["batch_in_epoch"] == 5
    assert len(_metrics(part)) == 5  # no step after the one that was running
    assert not (part / "train_summary.json").exists()
    assert signal.getsignal(signum) == handler_before  # the trainer's handler is gone again
    assert main(_args(method_args, part)) == 0
    assert "resumed from" in capsys.readouterr().out
    _assert_same_end(full, part)


def test_sigint_stops_cleanly_and_a_second_one_outside_a_write_stops_at_once(
        tmp_path, monkeypatch, toy_method_file):
    toy = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100",
           "--set", "train.checkpoint_every_iters=2"]
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_during_step(m, at_step=2, signum=signal.SIGINT)
        assert main(_args(toy, run)) == EXIT_STOPPED
    assert _ckpt(run)["step"] == 3
    run2 = tmp_path / "run2"
    with monkeypatch.context() as m:  # two at once, mid-step: out now, the last checkpoint kept
        _signal_during_step(m, at_step=4, signum=signal.SIGINT, times=2)
        assert main(_args(toy, run2)) == 130
    assert _ckpt(run2)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_during_the_checkpoint_write_waits_for_it(tmp_path, monkeypatch,
                                                                  toy_method_file):
    """SIGTERM, then SIGTERM again while rank 0 is inside torch.save of the stop's checkpoint:
    the write completes, the run exits as stopped and the checkpoint loads."""
    import ssl_zoo.checkpoint as ckpt

    real_save, calls = torch.save, []

    def slow_save(obj, fh, *a, **k):
        calls.append(obj["step"])
        if obj["step"] == 3:  # the stop's checkpoint: signalled again mid-write
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", slow_save)
    toy = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100"]
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_during_step(m, at_step=2, signum=signal.SIGTERM)
        assert main(_args(toy, run)) == EXIT_STOPPED
    assert calls == [3]
    state, path = load_latest_checkpoint(run)
    assert path.name == "last.pt" and state["step"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]


def test_an_interrupted_atomic_save_leaves_the_old_checkpoint_and_no_temp_file(tmp_path,
                                                                              monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"step": 1}, path)

    def interrupted(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr("ssl_zoo.checkpoint.torch.save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path, keep_previous="prev.pt")
    assert safe_load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_stop_request_only_a_second_sigint_outside_a_write_interrupts():
    stop = StopRequest(["SIGUSR1", "SIGINT"])
    with stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # a cluster's repeated signal: nothing more
        assert stop.requested and stop.received == signal.SIGUSR1
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGINT)  # deferred: no KeyboardInterrupt mid-write
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_auto_starts_fresh_on_an_empty_dir_and_refuses_another_runs(
        tmp_path, capsys, toy_method_file):
    toy = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_args(toy, empty, "--set", "train.max_steps=3")) == 0
    assert _ckpt(empty)["step"] == 3 and "resumed from" not in capsys.readouterr().out
    # the same command again: the run is complete, so it resumes at its end and trains nothing
    assert main(_args(toy, empty, "--set", "train.max_steps=3")) == 0
    assert "resumed from" in capsys.readouterr().out and len(_metrics(empty)) == 3
    # another run's directory: one line naming what differs, nothing touched
    before = (empty / "checkpoints" / "last.pt").read_bytes()
    assert main(_args(MOCO, empty, "--set", "train.max_steps=3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds another run" in err and "method" in err
    assert (empty / "checkpoints" / "last.pt").read_bytes() == before


def test_requeue_under_slurm_runs_scontrol_after_the_checkpoint(tmp_path, monkeypatch,
                                                               toy_method_file, capsys):
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text(f"#!{sys.executable}\nimport sys, pathlib, glob\n"
                    f"ck = glob.glob({str(tmp_path / 'run' / 'checkpoints' / '*.pt')!r})\n"
                    f"pathlib.Path({str(log)!r}).write_text(' '.join(sys.argv[1:]) + "
                    "f' checkpoints={len(ck)}')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    toy = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100"]
    with monkeypatch.context() as m:
        _signal_during_step(m, at_step=1, signum=signal.SIGUSR1)
        assert main(_args(toy, tmp_path / "run", "--set", "train.requeue=true")) == EXIT_STOPPED
    assert log.read_text() == "requeue 4242 checkpoints=1"  # after the checkpoint was written
    assert "requeued SLURM job 4242" in capsys.readouterr().out
    assert slurm_job_id({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5",
                         "SLURM_ARRAY_TASK_ID": "3"}) == "5_3"
    assert slurm_job_id({}) is None


def test_checkpoint_every_minutes(tmp_path, monkeypatch, toy_method_file):
    saved = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda state, run_dir: saved.append(state["step"]) or real(state, run_dir))
    toy = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100"]
    assert main(_args(toy, tmp_path / "a", "--set", "train.max_steps=4")) == 0
    assert saved == [4]  # off by default: at the end only
    saved.clear()
    assert main(_args(toy, tmp_path / "b", "--set", "train.max_steps=4",
                      "--set", "train.checkpoint_every_minutes=60")) == 0
    assert saved == [4]  # an hour has not passed
    saved.clear()
    assert main(_args(toy, tmp_path / "c", "--set", "train.max_steps=4",
                      "--set", "train.checkpoint_every_minutes=1e-7")) == 0
    assert saved == [1, 2, 3, 4, 4]  # due after every step (and the end's own checkpoint)


# ---- two processes ---------------------------------------------------------------------------
def _ranks(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the rank processes a launcher (torchrun in it) started."""
    out = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat_file.read_text().rpartition(")")[2].split()[1]) != launcher_pid:
                continue
            env = (stat_file.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(stat_file.parent.name)
    return out


def _wait_for_lines(proc, metrics: Path, n: int, timeout: float = 300) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before {n} log lines (rc {proc.poll()})")


@pytest.mark.slow
def test_two_ranks_stop_at_the_same_step_and_elastic_restarts_resume_bit_identically(
        tmp_path):
    """torchrun, 2 ranks, SwAV with its queue: SIGUSR1 to rank 1 only; both ranks stop after
    the same (log) step, rank 0 checkpoints, the launcher exits 75. Then an elastic torchrun
    (--max-restarts 1) with --resume auto continues; rank 1 is SIGKILLed once mid-way, torchrun
    restarts both ranks, they resume from the last checkpoint, and the run ends bit-identical
    to an uninterrupted two-process run."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["-m", "ssl_zoo", "train", "--no-progress", "--method", "swav", "--dataset", "demo",
              "--batch-size", "32", "--epochs", "1", "--no-eval", "--resume", "auto",
              "--set", "method.queue_length=64", "--set", "method.queue_start_epoch=0",
              "--set", "method.num_prototypes=32", "--set", "train.max_steps=16",
              "--set", "train.log_every_iters=2", "--set", "train.checkpoint_every_iters=4"]
    nproc = [sys.executable, *common[:3], "--nproc", "2", *common[3:]]
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run([*nproc, "--out", str(full)], env=env, check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = subprocess.Popen([*nproc, "--out", str(part)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_lines(proc, part / "metrics.jsonl", 2)  # step 4 logged
    os.kill(_ranks(proc.pid)[1], signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    step = _ckpt(part)["step"]
    assert 4 <= step < 16 and step % 2 == 0  # agreed at a log step
    assert f"rank 1: stopped by SIGUSR1 at iteration {step}" in out
    assert f"stopped by another rank's signal at iteration {step}" in out  # rank 0
    assert _metrics(part)[-1]["step"] == step

    elastic = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "--max-restarts", "1", *common[1:], "--out", str(part)]
    proc = subprocess.Popen(elastic, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for_lines(proc, part / "metrics.jsonl", step // 2 + 2)  # past the next checkpoint
    os.kill(_ranks(proc.pid)[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("resumed from") >= 2  # the first start and the restart
    _assert_same_end(full, part)
