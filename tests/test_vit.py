"""SwAV with a tiny timm ViT at 2x32 + 4x16 crops (patch 4, depth 2, 64-d): it trains through the
real trainer (AdamW, weight-decay cosine, gradient clipping), one ViT forward per resolution,
with no host sync in a step, 2 gloo ranks = 1 process, a killed run resumes bit-identically, and
the export loads into timm's own model with ``strict=True``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ddp_harness import compare_one_vs_two, make_inputs
from test_resume import kill_and_resume_equals_uninterrupted
from test_train_sync import _steps_syncs

from ssl_zoo.assemble import load_files, resolve
from ssl_zoo.cli import main
from ssl_zoo.optim import weight_decay_at
from ssl_zoo.train import Trainer

timm = pytest.importorskip("timm")

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "swav" / "cpu-demo-vit.yaml")
"""SwAV's 2x32 + 4x16 crops through a ViT with 4-px patches, AdamW, weight-decay cosine, clip."""
MODEL = "vit_tiny_patch16_224"
SMALLER = {"depth": 2, "embed_dim": 64, "num_heads": 2}
"""The recipe's ViT at half its depth and two thirds of its width, for fast tests."""
TINY = {**load_files([RECIPE])["backbone_args"], **SMALLER}
VIT = [f"backbone_args.{k}={v}" for k, v in SMALLER.items()]


def _trainer(tmp_path, sets) -> Trainer:
    run = resolve(load_files([RECIPE]), [*VIT, "train.batch_size=32", "train.epochs=1",
                                         "eval.enabled=false", "train.device=cpu",
                                         "method.num_prototypes=30", *sets])
    assert run.config.backbone == f"timm:{MODEL}" and TINY["patch_size"] == 4
    assert [(g.count, g.size) for g in run.view_spec.groups] == [(2, 32), (4, 16)]
    assert run.config.train.clip_grad_norm == 3.0
    return Trainer(run, tmp_path / "run", show_progress=False)


def test_swav_with_a_tiny_vit_trains(tmp_path):
    trainer = _trainer(tmp_path, ["train.max_steps=16", "train.log_every_iters=4",
                                  "train.lr_per_256=0.004"])
    net = trainer.method.backbone
    assert type(net).__name__ == "VisionTransformer" and trainer.method.feature_dim == 64
    shapes = []
    net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    result = trainer.fit()
    assert shapes[:2] == [(64, 3, 32, 32), (128, 3, 16, 16)]  # one forward per resolution
    assert len(shapes) == 2 + 32  # the trainer's dry step (ssl_zoo/contract.py), 16 steps
    losses = [r["loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(0 < r["grad_norm"] for r in result.history)  # the clip's norm, logged
    state = trainer.method.state_dict()
    assert not torch.equal(state["backbone.pos_embed"], before["backbone.pos_embed"])
    wd = [g["weight_decay"] for g in trainer.optimizer.param_groups]
    assert wd == [pytest.approx(weight_decay_at(15, 16, 0.04, 0.4)), 0.0]
    assert isinstance(trainer.optimizer, torch.optim.AdamW)


def test_no_host_sync_in_vit_steps(tmp_path, monkeypatch):
    per_step = _steps_syncs(_trainer(tmp_path, ["train.max_steps=6",
                                                "train.log_every_iters=1000"]), monkeypatch)
    assert len(per_step) == 6
    assert per_step[2:] == [[]] * 4, per_step


def _build_vit_swav():
    from ssl_zoo.backbones import build_backbone
    from ssl_zoo_methods.swav import SwAV, SwAVConfig

    net, dim = build_backbone(f"timm:{MODEL}", args=TINY)
    return SwAV(net, dim, SwAVConfig(num_prototypes=12, feat_dim=8, hidden_dim=16,
                                     queue_length=16, queue_start_epoch=0))


def test_two_gloo_ranks_equal_one_process():
    groups, index = make_inputs(batch=8, sizes=[(2, 32), (4, 16)])
    (losses, state), ranks = compare_one_vs_two(_build_vit_swav, groups, index, steps=3)
    for r in ranks:
        assert r["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    for key, value in state.items():
        for r in ranks:
            if value.dtype.is_floating_point:
                torch.testing.assert_close(r["state"][key], value, rtol=1e-4, atol=1e-5,
                                           msg=key)
            else:
                assert torch.equal(r["state"][key], value), key


def _cli(sets: list[str]) -> list[str]:
    return [w for s in sets for w in ("--set", s)]


def test_a_killed_vit_run_resumes_bit_identically(tmp_path):
    kill_and_resume_equals_uninterrupted(
        tmp_path, "swav",
        ["--config", RECIPE, "--batch-size", "32", "--epochs", "1",
         *_cli([*VIT, "train.max_steps=16", "method.num_prototypes=30"])],
        total_steps=16)


def test_export_loads_into_timm_strictly(tmp_path):
    run = tmp_path / "vit"
    assert main(["train", "--config", RECIPE, "--batch-size", "32",
                 "--epochs", "1", "--no-eval", "--no-progress", "--out", str(run),
                 *_cli([*VIT, "train.max_steps=2", "method.num_prototypes=30"])]) == 0
    out = tmp_path / "vit.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    meta = json.loads((tmp_path / "vit.pt.json").read_text())
    assert meta["timm_model"] == MODEL
    assert meta["timm_kwargs"] == {"num_classes": 0, **TINY, "dynamic_img_size": True}
    model = timm.create_model(MODEL, **meta["timm_kwargs"])
    model.load_state_dict(sd, strict=True)
    plain = timm.create_model(MODEL, num_classes=0, **TINY)  # no dynamic size: same keys
    plain.load_state_dict(sd, strict=True)
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(sd["pos_embed"], trained["backbone.pos_embed"])
    from ssl_zoo import load_backbone

    again = load_backbone(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x))
        torch.testing.assert_close(plain.eval()(x), model(x))
        small = torch.randn(2, 3, 16, 16)  # a local crop: the dynamic model takes it
        assert again(small).shape == (2, 64)
