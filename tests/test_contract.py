"""The plug-in contract as the trainer keeps it (ssl_zoo/method.py, docs/design.md "The plug-in
contract"): the context ``forward`` and every hook get, one meaning of ``ctx.step``, and which
network is evaluated and exported."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_zoo import cli
from ssl_zoo.assemble import resolve
from ssl_zoo.errors import ConfigError, UserError
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
    on_log 2, 5 and 7 (whose records say step 3, 6 and 8). forward runs once more, first:
    the trainer's dry step (ssl_zoo/contract.py), at step 0."""
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
    assert by_hook["forward"] == [(0, 0), *iterations]  # the dry step's, then the 8 steps
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


# --------------------------------------------------------------------------------------------
# contract mistakes: one line naming the method and the hook, before the first step
# --------------------------------------------------------------------------------------------
BAD = '''
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo import Method, MethodConfig, StepOutput
from ssl_zoo.data.views import CropGroup, ViewSpec


@dataclass
class BadConfig(MethodConfig):
    mistake: str = "none"
    """Which contract mistake forward makes."""


class Bad(Method):
    name = "bad"
    Config = BadConfig

    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.head = torch.nn.Linear(feature_dim, 4)
        self.unused = torch.nn.Linear(4, 4)  # used only when mistake != "unused"
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @classmethod
    def default_views(cls, config, image_size):
        if config.mistake == "views":
            return [CropGroup(count=2, size=image_size)]
        return ViewSpec(groups=[CropGroup(count=2, size=image_size)])

    def forward(self, views, ctx=None):
        self.calls += 1
        m = self.config.mistake
        z = [F.normalize(self.head(f), dim=1) for f in self.encode_views(views)]
        if m != "unused":
            z = [self.unused(x) for x in z]
        per_sample = 2 - 2 * (z[0] * z[1]).sum(1)
        if m == "tensor":
            return per_sample.mean()
        if m == "vector":
            return StepOutput(per_sample)
        if m == "metric":
            return StepOutput(per_sample.mean(), {"per_sample": per_sample.detach()})
        if m == "detached":
            return StepOutput(per_sample.mean().detach())
        return StepOutput(per_sample.mean(), {"calls": self.calls.float()})


class NoCtx(Bad):
    name = "noctx"

    def forward(self, views):
        return super().forward(views)
'''

MISTAKES = {
    "tensor": r"Bad\.forward returned Tensor, not an ssl_zoo\.StepOutput",
    "vector": r"Bad\.forward: StepOutput\.loss has shape \(8,\); it must be a scalar",
    "metric": r"Bad\.forward: metric 'per_sample' is a tensor of shape \(8,\)",
    "detached": r"Bad\.forward: StepOutput\.loss does not require grad",
    "unused": r"Bad\.forward: 2 trainable parameter\(s\) get no gradient from the loss: "
              r"unused\.weight, unused\.bias; a multi-process \(DDP\) run",
}


@pytest.fixture
def bad(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    return path


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_contract_mistakes_are_one_line_errors_before_the_first_step(mistake, tmp_path, bad):
    data = tiny_npz(tmp_path / "tiny.npz")
    trainer = Trainer(resolve({}, _sets(data, f"method={bad}:Bad", f"method.mistake={mistake}")),
                      tmp_path / "run", show_progress=False)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    with pytest.raises(UserError, match=MISTAKES[mistake]) as caught:
        trainer.fit()
    assert "\n" not in str(caught.value)
    assert trainer.step == 0  # nothing trained, nothing applied
    after = trainer.method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # calls: restored to 0


def test_a_forward_without_ctx_and_default_views_of_the_wrong_type(tmp_path, bad, capsys):
    data = tiny_npz(tmp_path / "tiny.npz")
    with pytest.raises(UserError, match=r"NoCtx\.forward must accept \(views, "
                                        r"ctx=None\)"):
        Trainer(resolve({}, _sets(data, f"method={bad}:NoCtx")), tmp_path / "r",
                show_progress=False)
    with pytest.raises(UserError, match=r"Bad\.default_views returned list, not a "):
        resolve({}, _sets(data, f"method={bad}:Bad", "method.mistake=views"))
    code = cli.main(["train", "--method", f"{bad}:Bad", "--dataset", f"npz:{data}",
                     "--set", "method.mistake=tensor", "--set", "train.num_workers=0",
                     "--set", "train.batch_size=8",
                     "--no-progress", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "forward returned Tensor" in err


def test_the_dry_step_puts_everything_back():
    """Buffers (batch-norm statistics), host counters, gradients and every random generator
    are as before the dry step; only its checks remain."""
    import random

    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.contract import dry_step
    from ssl_zoo.data.views import Views
    from ssl_zoo.method import TrainContext
    from ssl_zoo_methods.swav import SwAV, SwAVConfig

    torch.manual_seed(0)
    backbone, dim = build_backbone("convnet_w0.25", image_size=16)
    method = SwAV(backbone, dim, SwAVConfig(num_prototypes=8, feat_dim=8, queue_length=16))
    method.iteration = 5  # a host counter
    method.prototypes.weight.grad = torch.ones_like(method.prototypes.weight)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    ctx = TrainContext(log_step=False)
    generators = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    def views():
        torch.rand(3)  # draws, as making crops does
        random.random()
        np.random.rand()
        return Views([torch.randn(16, 3, 16, 16)], [2], torch.arange(8))

    dry_step(method, views, ctx, contextlib.nullcontext())
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and method.iteration == 5
    assert torch.equal(method.prototypes.weight.grad, torch.ones_like(method.prototypes.weight))
    assert method.backbone.training and ctx.log_step is False
    assert torch.equal(torch.get_rng_state(), generators[0])
    assert random.getstate() == generators[1]
    assert np.array_equal(np.random.get_state()[1], generators[2])
    # a forward does move the batch-norm statistics (so that restoring them is tested)
    method(views(), ctx)
    moved = method.state_dict()
    bn = [k for k in before if k.endswith("running_mean")]
    assert bn and not all(torch.equal(before[k], moved[k]) for k in bn)


# --------------------------------------------------------------------------------------------
# logged metrics are means over ranks
# --------------------------------------------------------------------------------------------
def _log_step_on_rank(rank: int, world: int) -> dict:
    """One log step's transfer on this rank, with metrics that differ per rank."""
    from ssl_zoo.steps import read_to_host

    metrics = {"device_metric": torch.tensor(10.0 * (rank + 1)),
               "count": torch.tensor(rank + 3),  # an integer tensor: a mean of counts
               "host_number": 0.25 * rank, "same": 7.0, "text": f"rank{rank}"}
    loss, host, extra, averaged = read_to_host(
        torch.tensor(1.0 + rank), metrics, [torch.tensor(float(rank))],
        torch.tensor([2.0 * rank, 4.0]))
    return {"loss": loss, "host": host, "extra": extra, "averaged": averaged}


def test_logged_metrics_are_the_mean_over_two_gloo_ranks():
    from ssl_zoo.testing import run_on_ranks

    ranks = run_on_ranks(_log_step_on_rank, world=2)
    for r, got in enumerate(ranks):
        assert got["loss"] == 1.5
        assert got["host"]["device_metric"] == 15.0  # (10 + 20) / 2
        assert got["host"]["count"] == 3.5 and got["host"]["host_number"] == 0.125
        assert got["host"]["same"] == 7.0
        assert got["host"]["text"] == f"rank{r}"  # not a number: this rank's, as it is
        assert got["extra"] == [float(r)]  # the non-finite counters: not averaged
        assert got["averaged"] == [1.0, 4.0]


# --------------------------------------------------------------------------------------------
# the weight-decay schedule, as the trainer applies it
# --------------------------------------------------------------------------------------------
def test_weight_decay_follows_its_cosine_per_iteration_on_the_decayed_group_only(tmp_path,
                                                                                   probe):
    """train.weight_decay 0.04 -> train.weight_decay_end 0.4 over 8 iterations: at iteration s
    the decayed group's decay is 0.4 + (0.04 - 0.4) (1 + cos(pi s / 7)) / 2, computed here by
    hand; the norm and bias group stays 0 throughout (AdamW, exclude_norm_and_bias)."""
    import math

    data = tiny_npz(tmp_path / "tiny.npz")
    trainer = Trainer(resolve({}, _sets(data, f"method={probe}:Probe", "train.optimizer=adamw",
                                        "train.weight_decay=0.04",
                                        "train.weight_decay_end=0.4")),
                      tmp_path / "run", show_progress=False)
    seen = []
    step = trainer.optimizer.step

    def recording(*args, **kwargs):
        seen.append([g["weight_decay"] for g in trainer.optimizer.param_groups])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    trainer.fit()
    assert len(seen) == 8 and len(seen[0]) == 2
    for s, (decayed, no_decay) in enumerate(seen):
        want = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * s / 7)) / 2
        assert decayed == pytest.approx(want, rel=1e-12) and no_decay == 0.0
    assert seen[0][0] == pytest.approx(0.04) and seen[-1][0] == pytest.approx(0.4)


@pytest.mark.slow
def test_an_unused_parameter_under_two_processes_is_our_one_line_error(tmp_path, bad):
    """Under --nproc 2 (gloo) the dry step names the parameter in every rank before DDP's first
    reduction, instead of PyTorch's "Expected to have finished reduction" at step 2."""
    import os
    import subprocess

    data = tiny_npz(tmp_path / "tiny.npz")
    out = subprocess.run(
        [sys.executable, "-m", "ssl_zoo", "train", "--nproc", "2", "--method", f"{bad}:Bad",
         "--dataset", f"npz:{data}", "--no-progress", "--no-eval", "--out", str(tmp_path / "r"),
         "--set", "method.mistake=unused", "--set", "train.batch_size=8",
         "--set", "train.num_workers=0"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "get no gradient from the loss: unused.weight, unused.bias" in text
    assert "Expected to have finished reduction" not in text


def test_a_methods_train_defaults_sit_below_files_and_sets():
    """``Method.train_defaults`` replaces the trainer's defaults for that method only; a config
    file (or saved config) and ``--set`` still win, and other methods keep the trainer's."""
    from ssl_zoo.assemble import resolve
    from ssl_zoo.config import TrainConfig

    trainer_default = TrainConfig().batch_size
    assert trainer_default != 64
    assert resolve({}, [], method="byol", open_data=False).config.train.batch_size == 64
    assert resolve({}, [], method="simclr", open_data=False).config.train.batch_size \
        == trainer_default
    assert resolve({}, ["train.batch_size=32"], method="byol",
                   open_data=False).config.train.batch_size == 32
    assert resolve({"train": {"batch_size": 96}}, [], method="byol",
                   open_data=False).config.train.batch_size == 96
    # a saved config.json (every field written) resumes with what it says
    saved = resolve({"train": {"batch_size": 128}}, [], method="byol", open_data=False)
    from ssl_zoo.config import to_dict

    again = resolve(to_dict(saved.config), [], method="byol", open_data=False)
    assert again.config.train.batch_size == 128
