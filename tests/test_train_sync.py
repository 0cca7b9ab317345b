"""The training step never waits for the host: no operation that forces a device-to-host
synchronisation on a GPU runs inside a steady-state step of any method (docs/design.md, "Data
flow").

On this CPU the synchronising ATen operations are counted with a ``TorchDispatchMode`` around
the real trainer's ``_train_step`` (views, forward, loss, backward, optimiser, hooks); on a CUDA
machine the same steps also run under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch

from ssl_zoo.assemble import resolve
from ssl_zoo.data.views import make_views
from ssl_zoo.testing import SyncCounter, sync_ops_per_step
from ssl_zoo.train import Trainer

BASE = ["dataset=demo", "backbone=convnet", "train.batch_size=64", "train.epochs=1",
        "train.log_every_iters=1000", "eval.enabled=false", "train.max_steps=8"]
# variants beyond each method's defaults (which tests/test_conformance.py checks for every
# method with the kit's check_sync_free_step)
CASES = {
    "swav-queue-freeze-hard": ["method=swav", "method.queue_length=128",
                               "method.queue_start_epoch=0", "method.freeze_prototypes_iters=4",
                               "method.hard_assignment_iters=3", "train.optimizer=lars",
                               "train.exclude_norm_and_bias=false"],
    "swav-sgd": ["method=swav", "train.optimizer=sgd"],
    # DINO with its ViT recipe's trainer settings: AdamW, gradient clipping, the weight-decay
    # cosine, the teacher temperature warming up, the last layer frozen (epoch 0)
    "dino-vit-settings": ["method=dino", "method.out_dim=256", "method.hidden_dim=64",
                          "method.bottleneck_dim=32", "method.warmup_teacher_temp_epochs=3",
                          "method.teacher_temp=0.07", "method.head_batch_norm=false",
                          "views.groups.2.count=2", "train.optimizer=adamw",
                          "train.clip_grad_norm=3.0", "train.weight_decay=0.04",
                          "train.weight_decay_end=0.4"],
}


def _trainer(tmp_path, sets, device="cpu") -> Trainer:
    run = resolve({}, [*BASE, f"train.device={device}", *sets])
    return Trainer(run, tmp_path / "run", show_progress=False)


def _steps_syncs(trainer: Trainer, monkeypatch=None) -> list[list[str]]:
    """Run the trainer; the sync ops of each of its steps (the kit's counter)."""
    return sync_ops_per_step(trainer)


def test_the_counter_sees_the_operations_that_synchronise():
    x = torch.randn(8)
    with SyncCounter() as counter:
        float(x.sum())
        x[x > 0]
        x.nonzero()
        torch.bincount(torch.tensor([1, 2]))
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.where(x > 0, x, 0.0)  # a mask applied with where: fine
        x.repeat_interleave(2)  # a repeat count known on the host: fine
    assert counter.found == ["aten::_local_scalar_dense", "aten::index with a boolean mask",
                             "aten::nonzero", "aten::lift_fresh", "aten::bincount",
                             "aten::lift_fresh", "aten::repeat_interleave without output_size"]


@pytest.mark.parametrize("case", list(CASES))
def test_no_host_sync_in_steady_state_steps(case, tmp_path, monkeypatch):
    per_step = _steps_syncs(_trainer(tmp_path, CASES[case]), monkeypatch)
    assert len(per_step) == 8
    steady = per_step[2:]  # the first steps create optimiser state and cached constants
    assert steady == [[]] * len(steady), steady


def _non_square_folder(root):
    """24 images of 5 shapes (4:3, 3:4, 1:2, tiny, wide) in 2 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    shapes = [(30, 40), (40, 30), (24, 12), (6, 5), (10, 40)]
    for i in range(24):
        h, w = shapes[i % len(shapes)]
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / f"c{i % 2}" / f"{i}.png")
    return root


@pytest.mark.parametrize("source", ["folder", "prepared"])
def test_no_host_sync_with_real_size_images(source, tmp_path, monkeypatch):
    """Original sizes travel as a device tensor; boxes, fallback and canvas mapping are
    per-sample tensor code."""
    from ssl_zoo.data.prepared import prepare

    folder = _non_square_folder(tmp_path / "imgs")
    spec = f"folder:{folder}"
    if source == "prepared":
        prepare(spec, tmp_path / "store", canvas=18, workers=0, show_progress=False)
        spec = f"prepared:{tmp_path / 'store'}"
    sets = ["method=swav", f"dataset={spec}", "image_size=16", "train.batch_size=8",
            "train.epochs=4", "method.num_prototypes=8", "train.num_workers=0"]
    trainer = _trainer(tmp_path, sets)
    seen = []
    def recording(images, spec, generator=None, sizes=None):
        seen.append(sizes)
        return make_views(images, spec, generator, sizes)

    monkeypatch.setattr("ssl_zoo.train.make_views", recording)
    per_step = _steps_syncs(trainer, monkeypatch)
    assert len(per_step) == 8 and all(s is not None and s.shape == (8, 2) for s in seen)
    assert per_step[2:] == [[]] * 6, per_step


def test_a_nan_step_is_skipped_on_the_device_and_leaves_the_swav_queue_unchanged(
        tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, [*CASES["swav-queue-freeze-hard"], "train.skip_nonfinite=5",
                                  "train.max_steps=6"])
    method = trainer.method
    forward = type(method).forward
    snapshots = {}

    def poisoned(self, views, ctx=None):
        out = forward(self, views, ctx)
        if trainer.step == 3:  # this step's loss is NaN
            snapshots["queue"] = [q.features.clone() for q in self.queues]
            snapshots["params"] = {k: v.detach().clone() for k, v in self.named_parameters()}
            out.loss = out.loss * float("nan")
        return out

    after = type(method).after_optimizer_step

    def check_after(self, ctx):
        after(self, ctx)
        if ctx.step == 3:
            for q, before in zip(self.queues, snapshots["queue"]):
                assert torch.equal(q.features, before)
            for k, v in self.named_parameters():
                assert torch.equal(v, snapshots["params"][k]), k

    monkeypatch.setattr(type(method), "forward", poisoned)
    monkeypatch.setattr(type(method), "after_optimizer_step", check_after)
    trainer.fit()
    assert trainer.nonfinite.seen == 1 and trainer.step == 6
    assert all(torch.isfinite(q.features).all() for q in method.queues)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_no_host_sync_on_cuda(case, tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, CASES[case], device="cuda")
    step = Trainer._train_step
    calls = []

    def checked(self, images, index, sizes=None):
        calls.append(1)
        if len(calls) <= 2:
            return step(self, images, index, sizes)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self, images, index, sizes)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "_train_step", checked)
    trainer.fit()
    assert len(calls) == 8
