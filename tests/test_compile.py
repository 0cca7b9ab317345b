"""``train.compile=true``: the backbone and heads run through torch.compile (inductor, with the
C compiler of this machine) and train as the eager model does, with the same checkpoint keys."""

from __future__ import annotations

import json

import torch
from torch._dynamo.utils import counters

from ssl_zoo.cli import main


def _train(tmp_path, name, *extra):
    run = tmp_path / name
    assert main(["train", "--method", "swav", "--epochs", "1", "--batch-size", "32",
                 "--no-progress", "--no-eval", "--set", "train.max_steps=3",
                 "--set", "train.log_every_iters=1", "--set", "method.num_prototypes=30",
                 "--set", "method.hidden_dim=32", "--set", "views.groups.1.count=0",
                 "--out", str(run), *extra]) == 0
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    return losses, torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_compiled_training_matches_eager(tmp_path):
    eager_losses, eager = _train(tmp_path, "eager")
    counters.clear()
    compiled_losses, compiled = _train(tmp_path, "compiled", "--set", "train.compile=true")
    assert counters["stats"]["unique_graphs"] >= 2  # backbone and heads did go through dynamo
    assert list(compiled) == list(eager)  # same key names: checkpoints and export unchanged
    assert len(compiled_losses) == 3
    for a, b in zip(compiled_losses, eager_losses):
        assert abs(a - b) < 1e-3 * abs(b), (compiled_losses, eager_losses)
    for key, value in eager.items():
        if value.is_floating_point():
            torch.testing.assert_close(compiled[key], value, rtol=1e-3, atol=1e-4, msg=key)
