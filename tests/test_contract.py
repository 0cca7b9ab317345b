"""The plug-in contract as the trainer keeps it (ssl_zoo/method.py, docs/design.md "The plug-in
contract"): the context ``forward`` and every hook get, one meaning of ``ctx.step``, and which
network is evaluated and exported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_zoo import cli
from ssl_zoo.assemble import resolve
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation import run as evaluation_run
from ssl_zoo.evaluation.run import RunEvaluation
from ssl_zoo.train import Trainer

N_TRAIN, N_TEST, SIZE = 32, 16, 16


def tiny_npz(path: Path) -> Path:
    """32 training and 16 test images of 16 px, 4 classes."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (N_TRAIN, SIZE, SIZE, 3), dtype=np.uint8),
             y_train=np.arange(N_TRAIN) % 4,
             x_test=rng.integers(0, 256, (N_TEST, SIZE, SIZE, 3), dtype=np.uint8),
             y_test=np.arange(N_TEST) % 4)
    return path


def _sets(data: Path, *more: str) -> list[str]:
    return [f"dataset=npz:{data}", "backbone=convnet_w0.25", "train.batch_size=8",
            "train.epochs=2", "train.num_workers=0", "train.device=cpu", "eval.enabled=false",
            "train.log_every_iters=3", "train.warmup_epochs=0", *more]


# --------------------------------------------------------------------------------------------
# ctx in forward, and one meaning of ctx.step
# --------------------------------------------------------------------------------------------
PROBE = '''
import torch
import torch.nn.functional as F

from ssl_zoo import Method, StepOutput
from ssl_zoo.data.views import CropGroup, ViewSpec

SEEN = []  # (hook, ctx.step, ctx.epoch)


class Probe(Method):
    name = "probe"

    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.head = torch.nn.Linear(feature_dim, 4)

    @classmethod
    def default_views(cls, config, image_size):
        return ViewSpec(groups=[CropGroup(count=2, size=image_size)])

    def forward(self, views, ctx=None):
        SEEN.append(("forward", ctx.step, ctx.epoch))
        z = [F.normalize(self.head(f), dim=1) for f in self.encode_views(views)]
        return StepOutput(2 - 2 * (z[0] * z[1]).sum(1).mean())

    def on_train_start(self, ctx):
        SEEN.append(("on_train_start", ctx.step, ctx.epoch))

    def on_epoch_start(self, ctx):
        SEEN.append(("on_epoch_start", ctx.step, ctx.epoch))

    def before_optimizer_step(self, ctx):
        SEEN.append(("before_optimizer_step", ctx.step, ctx.epoch))

    def after_optimizer_step(self, ctx):
        SEEN.append(("after_optimizer_step", ctx.step, ctx.epoch))

    def on_log(self, ctx, metrics):
        SEEN.append(("on_log", ctx.step, ctx.epoch))
'''


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(PROBE)
    return path


def _seen(trainer: Trainer) -> list[tuple[str, int, int]]:
    return sys.modules[type(trainer.method).__module__].SEEN


def test_ctx_step_means_the_same_in_forward_and_every_hook(tmp_path, probe):
    """ctx.step: the iterations completed before the current one. 2 epochs of 4 iterations,
    logged every 3: forward and the optimiser hooks see 0..7, on_epoch_start 0 and 4,
    on_log 2, 5 and 7 (whose records say step 3, 6 and 8)."""
    data = tiny_npz(tmp_path / "tiny.npz")
    trainer = Trainer(resolve({}, _sets(data, f"method={probe}:Probe")), tmp_path / "run",
                      show_progress=False)
    trainer.fit()
    seen = _seen(trainer)
    by_hook: dict[str, list[tuple[int, int]]] = {}
    for hook, step, epoch in seen:
        by_hook.setdefault(hook, []).append((step, epoch))
    iterations = [(s, s // 4) for s in range(8)]
    assert by_hook["on_train_start"] == [(0, 0)]
    assert by_hook["on_epoch_start"] == [(0, 0), (4, 1)]
    assert by_hook["forward"][-8:] == iterations
    assert by_hook["before_optimizer_step"] == iterations
    assert by_hook["after_optimizer_step"] == iterations
    assert by_hook["on_log"] == [(2, 0), (5, 1), (7, 1)]
    logged = [r["step"] for r in trainer.history if "loss" in r]
    assert logged == [s + 1 for s, _ in by_hook["on_log"]]


# --------------------------------------------------------------------------------------------
# which network is evaluated and exported
# --------------------------------------------------------------------------------------------
TWO_NETWORKS = '''
import copy

import torch
import torch.nn.functional as F

from ssl_zoo import Method, StepOutput
from ssl_zoo.data.views import CropGroup, ViewSpec


class TwoNets(Method):
    """A method whose evaluated network is a frozen copy of the backbone with other weights."""

    name = "twonets"
    default_eval_network = "target"

    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.head = torch.nn.Linear(feature_dim, 4)
        self.target = copy.deepcopy(backbone)
        with torch.no_grad():
            for p in self.target.parameters():
                p.mul_(-0.5).add_(0.1)
                p.requires_grad_(False)
        self.target.role = "target"

    def eval_networks(self):
        return {"backbone": self.backbone, "target": self.target}

    @classmethod
    def default_views(cls, config, image_size):
        return ViewSpec(groups=[CropGroup(count=2, size=image_size)])

    def forward(self, views, ctx=None):
        z = [F.normalize(self.head(f), dim=1) for f in self.encode_views(views)]
        return StepOutput(2 - 2 * (z[0] * z[1]).sum(1).mean())
'''


@pytest.fixture
def two_nets(tmp_path):
    path = tmp_path / "two_nets.py"
    path.write_text(TWO_NETWORKS)
    return path


@pytest.fixture
def seen_encoders(monkeypatch):
    """The role ("target" or "backbone") of every network the evaluation extracts features of."""
    seen: list[str] = []
    features = evaluation_run._features

    def recording(encoder, *args, **kwargs):
        seen.append(getattr(encoder, "role", "backbone"))
        return features(encoder, *args, **kwargs)

    monkeypatch.setattr(evaluation_run, "_features", recording)
    return seen


EVAL = ["eval.enabled=true", "eval.linear=false", "eval.clustering=false",
        "eval.pictures=false", "eval.baseline=false", "eval.batch_size=16"]


@pytest.mark.filterwarnings("ignore:kNN k=200")
def test_evaluation_and_export_use_the_methods_eval_network(tmp_path, two_nets, seen_encoders,
                                                             capsys):
    data = tiny_npz(tmp_path / "tiny.npz")
    run_dir = tmp_path / "run"
    run = resolve({}, _sets(data, f"method={two_nets}:TwoNets", "train.eval_every_epochs=1",
                            *EVAL))
    evaluation = RunEvaluation(run.data, run.view_spec, run.config, run_dir)
    trainer = Trainer(run, run_dir, show_progress=False, evaluation=evaluation)
    trainer.fit()
    assert seen_encoders == ["target", "target"]  # periodic kNN after epoch 1, final evaluation
    assert json.loads((run_dir / "eval.json").read_text())["network"] == "target"

    seen_encoders.clear()
    assert cli.main(["eval", str(run_dir)]) == 0
    assert cli.main(["eval", str(run_dir), "--set", "eval.network=backbone"]) == 0
    assert seen_encoders == ["target", "backbone"]

    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    for sets, prefix in (([], "target."), (["--set", "eval.network=backbone"], "backbone.")):
        out = tmp_path / f"{prefix}pt"
        assert cli.main(["export", str(run_dir), "--out", str(out), *sets]) == 0
        exported = torch.load(out, weights_only=True)
        want = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        assert exported.keys() == want.keys() and want
        assert all(torch.equal(exported[k], want[k]) for k in want)
        assert json.loads(Path(f"{out}.json").read_text())["network"] == prefix[:-1]
    weights = [k for k in want if k.endswith("weight")]
    assert not torch.equal(state[f"target.{weights[0]}"], state[f"backbone.{weights[0]}"])


def test_an_unknown_eval_network_is_a_one_line_error_at_resolve_time(tmp_path, two_nets,
                                                                     capsys):
    data = tiny_npz(tmp_path / "tiny.npz")
    with pytest.raises(ConfigError, match=r"eval.network: 'teacher'.*choices: backbone, target"):
        resolve({}, _sets(data, f"method={two_nets}:TwoNets", "eval.network=teacher"))
    with pytest.raises(ConfigError, match=r"choices: backbone\)"):
        resolve({}, _sets(data, "method=simclr", "eval.network=target"))
    code = cli.main(["train", "--method", "simclr", "--dataset", f"npz:{data}",
                     "--set", "eval.network=nope", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "eval.network: 'nope'" in err and len(err.strip().splitlines()) == 1
