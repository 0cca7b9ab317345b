"""The trainer applies the schedule it is told: the optimiser's learning rate at chosen iterations,
before and after a resume, against the schedule written out here."""

from __future__ import annotations

import math

import pytest

from ssl_zoo.assemble import resolve
from ssl_zoo.train import Trainer

IMAGES = 2000  # demo training set
BATCH = 100  # per process; one process: global batch 100, 20 iterations per epoch
EPOCHS = 2  # 40 iterations in all
WARMUP_EPOCHS = 0.25  # 5 iterations
LR_PER_256 = 0.4
FINAL_RATIO = 0.05


def expected_lr(step: int, global_batch: int) -> float:
    """Linear warm-up from 0 to the peak (reached on the last warm-up iteration), then a cosine
    from the peak down to final_lr_ratio x peak on the last iteration; peak = lr_per_256 x global
    batch / 256."""
    peak = LR_PER_256 * global_batch / 256
    total = EPOCHS * (IMAGES // global_batch)
    warmup = round(WARMUP_EPOCHS * (IMAGES // global_batch))
    if step < warmup:
        return peak * (step + 1) / warmup
    final = FINAL_RATIO * peak
    progress = (step - warmup) / (total - 1 - warmup)  # 0 at the first cosine step, 1 at the end
    return final + (peak - final) * (1 + math.cos(math.pi * progress)) / 2


def _trainer(run_dir, *, resume: bool = False, stop_at: int | None = None) -> Trainer:
    sets = ["method=simclr", "dataset=demo", f"train.batch_size={BATCH}",
            f"train.epochs={EPOCHS}", f"train.warmup_epochs={WARMUP_EPOCHS}",
            f"train.lr_per_256={LR_PER_256}", f"train.final_lr_ratio={FINAL_RATIO}",
            "train.optimizer=sgd", "train.num_workers=0", "train.device=cpu",
            "train.checkpoint_every_iters=12", "train.log_every_iters=1000",
            "eval.enabled=false", "method.proj_dim=8", "backbone=convnet_w0.25"]
    trainer = Trainer(resolve({}, sets), run_dir, resume=resume, show_progress=False)
    trainer.seen_lr = {}  # iteration -> the lr of every parameter group at its optimiser step
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        trainer.seen_lr[trainer.step] = [g["lr"] for g in trainer.optimizer.param_groups]
        if stop_at is not None and trainer.step == stop_at:
            raise KeyboardInterrupt  # a crash between two checkpoints
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return trainer


def test_lr_schedule_through_training_and_resume(tmp_path):
    run = tmp_path / "run"
    first = _trainer(run, stop_at=17)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = _trainer(run, resume=True)
    second.fit()
    assert min(second.seen_lr) == 12  # resumed from the checkpoint at iteration 12
    assert max(second.seen_lr) == EPOCHS * IMAGES // BATCH - 1

    peak = LR_PER_256 * BATCH / 256
    checks = {0: "warm-up start", 2: "warm-up", 4: "peak", 5: "cosine start", 11: "cosine",
              25: "cosine after the resume", 39: "end"}
    for step, what in checks.items():
        seen = (first if step < 17 else second).seen_lr[step]
        want = expected_lr(step, BATCH)
        assert seen == [pytest.approx(want, rel=1e-12)] * len(seen), (step, what)
    assert expected_lr(4, BATCH) == pytest.approx(peak)  # the formula's own landmarks
    assert expected_lr(39, BATCH) == pytest.approx(FINAL_RATIO * peak)
    # after the resume every iteration (12-39, replaying 12-16) has the scheduled lr, and the
    # replayed ones the lr of the interrupted run
    for step, seen in second.seen_lr.items():
        assert seen == [pytest.approx(expected_lr(step, BATCH), rel=1e-12)] * len(seen), step
        if step in first.seen_lr:
            assert seen == first.seen_lr[step]
