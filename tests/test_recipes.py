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
    for method in ("swav", "simclr", "moco", "pcl", "deepclusterv2", "selav2"):
        assert {(method, "cpu-demo"), (method, "cifar10-r18"), (method, "cifar100-r18")} <= names
        assert any(m == method and s.startswith("imagenet") for m, s in names)
    for method in ("dino", "byol"):
        assert {(method, "cpu-demo"), (method, "cifar10-r18"), (method, "imagenet-r50")} <= names
    assert ("dino", "imagenet-vits16") in names
    assert {("swav", "imagenet-bs4096"), ("swav", "imagenet-bs256")} <= names
    for method in ("barlowtwins", "vicreg"):
        assert {(method, "cpu-demo"), (method, "cifar10-r18"), (method, "imagenet-r50")} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_is_valid_and_cites_its_source(path):
    assert path.read_text().startswith("#"), "a recipe starts with a comment citing its source"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. SwAV's prototypes-outnumber-rows warning
        run = resolve(load_files([str(path)]), [], open_data=False,
                      world_size=_processes(path))
    assert run.config.method == path.parent.name
    if path.stem.startswith("imagenet"):
        # DeepCluster-v2's and SeLa-v2's 400-epoch runs crop 160-px global views from 224 px
        small_crops = path.stem == "imagenet-400ep"
        assert run.image_size == 224
        assert run.view_spec.groups[0].size == (160 if small_crops else 224)
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


def test_barlowtwins_and_vicreg_imagenet_recipes_match_the_papers():
    """Barlow Twins (Zbontar et al. 2021; official main.py): batch 2048, LARS, lr 0.2 weights /
    0.0048 biases per 256 (the biases' rate through loss_scale, the decay scaled with it), wd
    1.5e-6, lambda 0.0051, 3 x 8192; VICReg (Bardes et al. 2022): batch 2048, LARS, base lr
    0.2, wd 1e-6, 25 / 25 / 1, 3 x 8192; both 1000 epochs, 10 warm-up, cosine to 1/1000."""
    bt = resolve(load_files(["recipes/barlowtwins/imagenet-r50.yaml"]), [], open_data=False,
                 world_size=32)
    vic = resolve(load_files(["recipes/vicreg/imagenet-r50.yaml"]), [], open_data=False,
                  world_size=32)
    for run in (bt, vic):
        t = run.config.train
        assert t.batch_size * 32 == 2048 and t.optimizer == "lars" and t.lr_per_256 == 0.2
        assert (t.epochs, t.warmup_epochs, t.final_lr_ratio) == (1000, 10, 0.001)
        assert t.exclude_norm_and_bias and t.lars_eta == 0.001
    m, t = bt.method_config, bt.config.train
    assert (m.lambda_offdiag, m.proj_hidden_dim, m.proj_dim, m.proj_layers) == (0.0051, 8192,
                                                                                8192, 3)
    assert t.lr_per_256 * m.loss_scale == pytest.approx(0.0048)
    assert t.weight_decay / m.loss_scale == pytest.approx(1.5e-6)
    m = vic.method_config
    assert (m.invariance_weight, m.variance_weight, m.covariance_weight) == (25, 25, 1)
    assert (m.expander_hidden_dim, m.expander_dim, vic.config.train.weight_decay) == (8192, 8192,
                                                                                     1e-6)
    assert [(g.blur_p, g.solarize_p) for g in vic.view_spec.groups] == [(1.0, 0.0), (0.1, 0.2)]


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


def test_dino_recipes_match_the_official_settings():
    """ViT-S/16: the README's 300-epoch command over main_dino.py's defaults; ResNet-50: the
    README's ResNet-50 command."""
    run = resolve(load_files(["recipes/dino/imagenet-vits16.yaml"]), [], open_data=False,
                  world_size=16)
    t, m = run.config.train, run.method_config
    assert (t.optimizer, t.lr_per_256, t.warmup_epochs, t.epochs) == ("adamw", 0.0005, 10, 300)
    assert t.lr_per_256 * 16 * 64 / 256 * t.final_lr_ratio == pytest.approx(1e-6)
    assert (t.weight_decay, t.weight_decay_end, t.clip_grad_norm) == (0.04, 0.4, 3.0)
    assert (m.out_dim, m.hidden_dim, m.bottleneck_dim, m.momentum) == (65536, 2048, 256, 0.996)
    assert (m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs) == (0.04, 0.07,
                                                                                     30)
    assert (m.student_temp, m.freeze_last_layer_epochs, m.norm_last_layer) == (0.1, 1, False)
    assert not m.head_batch_norm  # --use_bn_in_head false
    groups = run.view_spec.groups
    assert [(g.count, g.size, tuple(g.scale)) for g in groups] == [
        (1, 224, (0.4, 1.0)), (1, 224, (0.4, 1.0)), (10, 96, (0.05, 0.4))]
    assert run.view_spec.crop_indices("global") == [0, 1]
    assert [(g.blur_p, g.solarize_p) for g in groups] == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]
    r50 = resolve(load_files(["recipes/dino/imagenet-r50.yaml"]), [], open_data=False,
                  world_size=8)
    t = r50.config.train
    assert (t.optimizer, t.lr_per_256, t.weight_decay, t.weight_decay_end) == ("sgd", 0.03,
                                                                               1e-4, None)
    assert t.lr_per_256 * 8 * 64 / 256 * t.final_lr_ratio == pytest.approx(1e-6)
    assert [(g.count, tuple(g.scale)) for g in r50.view_spec.groups] == [
        (1, (0.14, 1.0)), (1, (0.14, 1.0)), (8, (0.05, 0.14))]


def test_byol_paper_recipe_matches_the_paper():
    run = resolve(load_files(["recipes/byol/imagenet-r50.yaml"]), [], open_data=False,
                  world_size=64)
    t, m = run.config.train, run.method_config
    assert t.batch_size * 64 == 4096 and t.lr_per_256 * 4096 / 256 == pytest.approx(3.2)
    assert (t.optimizer, t.weight_decay, t.epochs, t.warmup_epochs) == ("lars", 1.5e-6, 1000, 10)
    assert (m.proj_hidden_dim, m.proj_dim, m.pred_hidden_dim, m.momentum) == (4096, 256, 4096,
                                                                              0.996)
    assert [(g.blur_p, g.solarize_p) for g in run.view_spec.groups] == [(1.0, 0.0), (0.1, 0.2)]


# --------------------------------------------------------------------------------------------
# SwAV's recipes against the official scripts' command lines
# --------------------------------------------------------------------------------------------
# Copies of the arguments main_swav.py gets in facebookresearch/swav's scripts/ (commit
# 06b1b7c; the --data_path / --dist_url / --dump_path lines left out), with the script's GPU
# count (#SBATCH --gpus). Flags the scripts do not pass take main_swav.py's argparse defaults
# (OFFICIAL_DEFAULTS). In main_swav.py the optimiser is LARC(SGD(model.parameters(), momentum
# 0.9, weight_decay=wd), trust_coefficient=0.001, clip=False): every parameter is decayed and
# adapted, batch norm and biases included.
OFFICIAL = {
    "swav_800ep_pretrain.sh": (64, "swav/imagenet-bs4096.yaml", """
        --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
        --max_scale_crops 1. 0.14 --crops_for_assign 0 1 --temperature 0.1 --epsilon 0.05
        --sinkhorn_iterations 3 --feat_dim 128 --nmb_prototypes 3000 --queue_length 0
        --epochs 800 --batch_size 64 --base_lr 4.8 --final_lr 0.0048
        --freeze_prototypes_niters 313 --wd 0.000001 --warmup_epochs 10 --start_warmup 0.3
        --arch resnet50 --use_fp16 true --sync_bn apex"""),
    "swav_400ep_bs256_pretrain.sh": (4, "swav/imagenet-bs256.yaml", """
        --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
        --max_scale_crops 1. 0.14 --crops_for_assign 0 1 --temperature 0.1 --epsilon 0.05
        --sinkhorn_iterations 3 --feat_dim 128 --nmb_prototypes 3000 --queue_length 3840
        --epoch_queue_starts 15 --epochs 400 --batch_size 64 --base_lr 0.6 --final_lr 0.0006
        --freeze_prototypes_niters 5005 --wd 0.000001 --warmup_epochs 0 --arch resnet50
        --use_fp16 true --sync_bn pytorch"""),
    "swav_200ep_bs256_pretrain.sh": (4, "swav/imagenet-bs256-200ep.yaml", """
        --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
        --max_scale_crops 1. 0.14 --crops_for_assign 0 1 --temperature 0.1 --epsilon 0.05
        --sinkhorn_iterations 3 --feat_dim 128 --nmb_prototypes 3000 --queue_length 3840
        --epoch_queue_starts 15 --epochs 200 --batch_size 64 --base_lr 0.6 --final_lr 0.0006
        --freeze_prototypes_niters 5005 --wd 0.000001 --warmup_epochs 0 --arch resnet50
        --use_fp16 true --sync_bn pytorch"""),
}
OFFICIAL_DEFAULTS = {"start_warmup": ["0"], "syncbn_process_group_size": ["8"],
                     "hidden_mlp": ["2048"], "epoch_queue_starts": ["15"]}


def parse_command_line(text: str) -> dict[str, list[str]]:
    """``--flag v1 v2 ...`` tokens -> {flag: [values]}, over main_swav.py's defaults."""
    args, flag = dict(OFFICIAL_DEFAULTS), None
    for token in text.split():
        if token.startswith("--"):
            flag = token[2:]
            args[flag] = []
        else:
            args[flag].append(token)
    return args


@pytest.mark.parametrize("script", sorted(OFFICIAL))
def test_swav_recipes_equal_the_official_scripts(script):
    gpus, recipe, text = OFFICIAL[script]
    a = parse_command_line(text)
    one = {k: v[0] for k, v in a.items()}
    path = RECIPES[0].parents[1] / recipe
    assert script in path.read_text() and _processes(path) == gpus
    run = resolve(load_files([str(path)]), [], open_data=False, world_size=gpus)
    t, m = run.config.train, run.method_config
    global_batch = t.batch_size * gpus
    peak = t.lr_per_256 * global_batch / 256
    assert t.batch_size == int(one["batch_size"]) and t.epochs == int(one["epochs"])
    assert peak == pytest.approx(float(one["base_lr"]), rel=1e-12)
    assert peak * t.final_lr_ratio == pytest.approx(float(one["final_lr"]), rel=1e-12)
    assert peak * t.warmup_start_lr_ratio == pytest.approx(float(one["start_warmup"]),
                                                           abs=1e-12)
    assert t.warmup_epochs == float(one["warmup_epochs"])
    assert t.weight_decay == float(one["wd"]) and t.exclude_norm_and_bias is False  # scope
    assert (t.optimizer, t.lars_eta, t.momentum) == ("lars", 0.001, 0.9)
    assert t.amp != "off" and one["use_fp16"] == "true"
    assert t.sync_bn
    if one["sync_bn"] == "apex":  # groups of syncbn_process_group_size processes
        assert t.sync_bn_group_size == int(one["syncbn_process_group_size"])
    else:  # torch's SyncBatchNorm over every process
        assert one["sync_bn"] == "pytorch" and t.sync_bn_group_size in (0, gpus)
    assert run.config.backbone == one["arch"] and m.hidden_dim == int(one["hidden_mlp"])
    assert m.freeze_prototypes_iters == int(one["freeze_prototypes_niters"])
    assert m.queue_length == int(one["queue_length"])
    if m.queue_length:
        assert m.queue_start_epoch == int(one["epoch_queue_starts"])
        assert m.queue_length % global_batch == 0  # main_swav.py would cut it otherwise
    assert m.epsilon == float(one["epsilon"]) and m.temperature == float(one["temperature"])
    assert m.sinkhorn_iterations == int(one["sinkhorn_iterations"])
    assert m.feat_dim == int(one["feat_dim"]) and m.num_prototypes == int(one["nmb_prototypes"])
    assert list(m.crops_for_assign) == [int(c) for c in a["crops_for_assign"]]
    groups = run.view_spec.groups
    assert [g.count for g in groups] == [int(n) for n in a["nmb_crops"]]
    assert [g.size for g in groups] == [int(s) for s in a["size_crops"]]
    assert [tuple(g.scale) for g in groups] == [
        (float(lo), float(hi)) for lo, hi in zip(a["min_scale_crops"], a["max_scale_crops"])]


# --------------------------------------------------------------------------------------------
# DeepCluster-v2's recipes against the official scripts' command lines
# --------------------------------------------------------------------------------------------
# Copies of the arguments main_deepclusterv2.py gets in facebookresearch/swav's scripts/ (the
# --data_path / --dist_url / --dump_path lines left out), with the script's GPU count.
# main_deepclusterv2.py: LARC(SGD(momentum 0.9), trust 0.001, clip=False) on every parameter,
# hidden_mlp 2048 for resnet50, no mixed precision, apex SyncBN in groups of world_size // 8.
DCV2_OFFICIAL = {
    "deepclusterv2_800ep_pretrain.sh": (64, "deepclusterv2/imagenet-800ep.yaml", """
        --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
        --max_scale_crops 1. 0.14 --crops_for_assign 0 1 --temperature 0.1 --feat_dim 128
        --nmb_prototypes 3000 3000 3000 --epochs 800 --batch_size 64 --base_lr 4.8
        --final_lr 0.0048 --freeze_prototypes_niters 300000 --wd 0.000001 --warmup_epochs 10
        --start_warmup 0.3 --arch resnet50 --sync_bn apex"""),
    "deepclusterv2_400ep_pretrain.sh": (64, "deepclusterv2/imagenet-400ep.yaml", """
        --nmb_crops 2 4 --size_crops 160 96 --min_scale_crops 0.08 0.05
        --max_scale_crops 1. 0.14 --crops_for_assign 0 1 --temperature 0.1 --feat_dim 128
        --nmb_prototypes 3000 3000 3000 --epochs 400 --batch_size 64 --base_lr 4.8
        --final_lr 0.0048 --freeze_prototypes_niters 300000 --wd 0.000001 --warmup_epochs 10
        --start_warmup 0.3 --arch resnet50 --sync_bn apex"""),
}


@pytest.mark.parametrize("script", sorted(DCV2_OFFICIAL))
def test_deepclusterv2_recipes_equal_the_official_scripts(script):
    gpus, recipe, text = DCV2_OFFICIAL[script]
    a = parse_command_line(text)
    one = {k: v[0] for k, v in a.items()}
    path = RECIPES[0].parents[1] / recipe
    assert script in path.read_text() and _processes(path) == gpus
    run = resolve(load_files([str(path)]), [], open_data=False, world_size=gpus)
    t, m = run.config.train, run.method_config
    peak = t.lr_per_256 * t.batch_size * gpus / 256
    assert t.batch_size == int(one["batch_size"]) and t.epochs == int(one["epochs"])
    assert peak == pytest.approx(float(one["base_lr"]), rel=1e-12)
    assert peak * t.final_lr_ratio == pytest.approx(float(one["final_lr"]), rel=1e-12)
    assert peak * t.warmup_start_lr_ratio == pytest.approx(float(one["start_warmup"]))
    assert t.warmup_epochs == float(one["warmup_epochs"])
    assert t.weight_decay == float(one["wd"]) and t.exclude_norm_and_bias is False
    assert (t.optimizer, t.lars_eta, t.momentum) == ("lars", 0.001, 0.9)
    assert t.amp == "off" and t.sync_bn and t.sync_bn_group_size == gpus // 8
    assert run.config.backbone == one["arch"] and m.hidden_dim == 2048
    # frozen for longer than the run (ImageNet: 1,281,167 images): never trained, as ours
    assert int(one["freeze_prototypes_niters"]) > 1281167 // (64 * gpus) * t.epochs
    assert m.temperature == float(one["temperature"]) and m.feat_dim == int(one["feat_dim"])
    assert list(m.num_prototypes) == [int(k) for k in a["nmb_prototypes"]]
    assert list(m.crops_for_assign) == [int(c) for c in a["crops_for_assign"]]
    groups = run.view_spec.groups
    assert [g.count for g in groups] == [int(n) for n in a["nmb_crops"]]
    assert [g.size for g in groups] == [int(s) for s in a["size_crops"]]
    assert [tuple(g.scale) for g in groups] == [
        (float(lo), float(hi)) for lo, hi in zip(a["min_scale_crops"], a["max_scale_crops"])]
    assert all((g.brightness, g.hue, g.blur_p) == (0.8, 0.2, 0.5) for g in groups)


def test_selav2_imagenet_recipe_is_deepclusterv2s_400_epochs_with_sinkhorn():
    dc = resolve(load_files(["recipes/deepclusterv2/imagenet-400ep.yaml"]), [],
                 open_data=False, world_size=64)
    sela = resolve(load_files(["recipes/selav2/imagenet-400ep.yaml"]), [], open_data=False,
                   world_size=64)
    assert sela.config.train == dc.config.train and sela.view_spec == dc.view_spec
    assert sela.method_config.num_prototypes == dc.method_config.num_prototypes
    assert (sela.method_config.epsilon, sela.method_config.temperature) == (0.05, 0.1)
