"""Every recipe in recipes/ resolves to a valid run (method config, views, trainer settings),
composes with --set, and carries a comment citing its source."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from ssl_zoo.assemble import load_files, resolve

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/*.yaml"))


def _processes(path: Path) -> int:
    """The number of processes a recipe is meant for (a '# processes: N' line; default 1)."""
    found = re.search(r"^# processes: (\d+)$", path.read_text(), re.M)
    return int(found.group(1)) if found else 1


def test_every_method_has_its_recipes():
    names = {(p.parent.name, p.stem) for p in RECIPES}
    for method in ("swav", "simclr", "moco", "pcl"):
        assert {(method, "cpu-demo"), (method, "cifar10-r18"), (method, "cifar100-r18")} <= names
        assert any(m == method and s.startswith("imagenet") for m, s in names)
    assert {("swav", "imagenet-bs4096"), ("swav", "imagenet-bs256")} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_is_valid_and_cites_its_source(path):
    assert path.read_text().startswith("#"), "a recipe starts with a comment citing its source"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. SwAV's prototypes-outnumber-rows warning
        run = resolve(load_files([str(path)]), [], open_data=False,
                      world_size=_processes(path))
    assert run.config.method == path.parent.name
    if path.stem.startswith("imagenet"):
        assert run.image_size == 224 and run.view_spec.groups[0].size == 224
        assert run.config.backbone == ("timm:vit_small_patch16_224" if "vit" in path.stem
                                       else "resnet50")
    if path.stem.startswith("cifar"):
        assert run.config.backbone == "resnet18" and run.config.backbone_stem == "cifar"


def test_swav_paper_recipes_match_the_paper():
    run = resolve(load_files(["recipes/swav/imagenet-bs256.yaml"]), [], open_data=False,
                  world_size=4)
    m, t = run.method_config, run.config.train
    assert (m.num_prototypes, m.epsilon, m.queue_length, m.queue_start_epoch) == (3000, 0.05,
                                                                                 3840, 15)
    assert t.lr_per_256 * 256 / 256 == 0.6 and t.optimizer == "lars"
    assert [(g.count, g.size) for g in run.view_spec.groups] == [(2, 224), (6, 96)]
    big = resolve(load_files(["recipes/swav/imagenet-bs4096.yaml"]), [], open_data=False,
                  world_size=64)
    assert big.config.train.lr_per_256 * 4096 / 256 == pytest.approx(4.8)
    assert big.method_config.freeze_prototypes_iters == 313


def test_recipes_compose_with_sets_and_other_files(tmp_path):
    extra = tmp_path / "short.yaml"
    extra.write_text("train:\n  epochs: 30\n")
    run = resolve(load_files(["recipes/swav/cifar10-r18.yaml", str(extra)]),
                  ["method.num_prototypes=300", "views.groups.0.size=24"], open_data=False)
    assert run.config.train.epochs == 30 and run.config.train.optimizer == "lars"
    assert run.method_config.num_prototypes == 300 and run.method_config.queue_length == 3840
    assert run.view_spec.groups[0].size == 24 and run.view_spec.groups[0].blur_p == 0.5


def test_swav_vit_recipe_has_dinos_optimiser_and_swavs_method():
    """ViT-S/16: DINO's official optimiser settings (main_dino.py defaults), SwAV's bs256."""
    run = resolve(load_files(["recipes/swav/imagenet-vits16.yaml"]), [], open_data=False,
                  world_size=4)
    t, m = run.config.train, run.method_config
    assert (t.optimizer, t.lr_per_256, t.warmup_epochs, t.epochs) == ("adamw", 0.0005, 10, 100)
    assert t.lr_per_256 * t.final_lr_ratio == pytest.approx(1e-6)
    assert (t.weight_decay, t.weight_decay_end, t.clip_grad_norm) == (0.04, 0.4, 3.0)
    assert t.exclude_norm_and_bias and run.config.backbone_args == {"drop_path_rate": 0.1}
    assert [(g.count, g.size) for g in run.view_spec.groups] == [(2, 224), (6, 96)]
    assert (m.num_prototypes, m.epsilon, m.queue_length, m.freeze_prototypes_iters) == (
        3000, 0.05, 3840, 5005)
    cpu = resolve(load_files(["recipes/swav/cpu-demo-vit.yaml"]), [], open_data=False)
    assert cpu.config.backbone_args["patch_size"] == 4 and cpu.image_size == 32
    assert [(g.count, g.size) for g in cpu.view_spec.groups] == [(2, 32), (4, 16)]
