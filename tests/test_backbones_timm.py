"""timm backbones (``timm:NAME``): features, constructor arguments, names, crop sizes, and the
position embeddings resampled to each crop size, checked against a fixed-size timm ViT."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.assemble import resolve
from ssl_zoo.backbones import backbone_arch_info, build_backbone
from ssl_zoo.errors import ConfigError

timm = pytest.importorskip("timm")

NAME = "timm:vit_tiny_patch16_224"
TINY = {"patch_size": 4, "img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2}
"""A ViT small enough for the CPU: 8x8 patches of 4 px at 32 px, 2 blocks, 64-d."""


def test_features_are_the_class_token_after_the_final_norm():
    torch.manual_seed(0)
    net, dim = build_backbone(NAME, args=TINY)
    assert dim == 64 and net.num_classes == 0 and net.dynamic_img_size
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = net.eval()(x)
        tokens = net.forward_features(x)  # (B, 1 + 64 patches, D), normalised
    assert tokens.shape == (3, 65, 64)
    torch.testing.assert_close(feats, tokens[:, 0])


@pytest.mark.parametrize("name, args, dim", [
    ("timm:vit_small_patch16_224", {}, 384),
    ("timm:resnet18", {}, 512),  # a CNN: built without dynamic_img_size (it has none)
    ("timm:convnext_atto", {"drop_path_rate": 0.1}, 320),
])
def test_any_timm_model_on_meta(name, args, dim):
    with torch.device("meta"), torch.no_grad():
        net, d = build_backbone(name, args=args)
        out = net(torch.empty(2, 3, 64, 64))
    assert d == dim and out.shape == (2, dim)
    assert backbone_arch_info(name, args=args)["feature_dim"] == dim


def test_backbone_args_reach_the_constructor_through_set():
    run = resolve({}, ["backbone=timm:vit_tiny_patch16_224", "backbone_args.patch_size=4",
                       "backbone_args.img_size=32", "backbone_args.depth=2",
                       "backbone_args.embed_dim=64", "backbone_args.num_heads=2",
                       "backbone_args.drop_path_rate=0.1", "backbone_args.qkv_bias=false"],
                  open_data=False)
    assert run.config.backbone_args == {**TINY, "drop_path_rate": 0.1, "qkv_bias": False}
    net = run.build_method().backbone
    assert net.patch_embed.patch_size == (4, 4) and len(net.blocks) == 2
    assert net.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    assert net.blocks[0].attn.qkv.bias is None


def test_unknown_names_and_bad_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match="did you mean 'timm:vit_tiny_patch16_224'") as e:
        build_backbone("timm:vit_tiny_patch16_22")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown timm model 'swinish'"):
        build_backbone("timm:swinish")
    with pytest.raises(ConfigError, match=r"failed: .*unexpected keyword argument 'wings'") as e:
        build_backbone(NAME, args={"wings": 2})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="backbone_args.num_classes: not settable"):
        build_backbone(NAME, args={"num_classes": 10})
    with pytest.raises(ConfigError, match="for timm:NAME backbones only"):
        resolve({}, ["backbone=resnet18", "backbone_args.width=2"], open_data=False)


def test_without_timm_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match=r'optional extra: pip install -e "\.\[vit\]"') as e:
        build_backbone(NAME)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sets, match", [
    (["views.groups.1.size=18"], "views.groups.1.size: 18-px inputs do not fit .* 4-px patches"),
    (["backbone_args.patch_size=5"], "image_size: 32-px inputs .* 5-px patches"),
    (["backbone_args.dynamic_img_size=false"], "views.groups.1.size: .* takes only 32x32"),
])
def test_crops_the_patches_do_not_divide_fail_at_resolve_time(sets, match):
    base = [f"backbone={NAME}", *(f"backbone_args.{k}={v}" for k, v in TINY.items()),
            "views.groups.1.count=4"]
    with pytest.raises(ConfigError, match=match) as e:
        resolve({}, [*base, *sets], open_data=False)
    assert "\n" not in str(e.value)


def test_torchvision_vit_with_local_crops_fails_at_resolve_time():
    with pytest.raises(ConfigError, match="torchvision's ViT.* takes only 32-px inputs"):
        resolve({}, ["backbone=vit_b_16", "views.groups.1.count=4"], open_data=False)


def _resampled_pos_embed(pos_embed: torch.Tensor, grid: int, new: int) -> torch.Tensor:
    """Our own resampling: the class token's entry kept, the grid x grid patch entries as an
    image with one channel per dimension, bicubic with antialiasing (what timm says it does)."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    d = patches.shape[-1]
    img = patches.reshape(1, grid, grid, d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(new, new), mode="bicubic", antialias=True,
                        align_corners=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, new * new, d)], dim=1)


@pytest.mark.parametrize("size", [32, 16, 24, 8, 48])
def test_every_crop_size_equals_a_vit_built_for_it(size):
    """The multi-crop ViT at ``size`` px = a fixed-size timm ViT built for ``size`` px whose
    position embeddings are our resampling of the 32-px ones (grid 8 -> size / 4)."""
    torch.manual_seed(0)
    net, _ = build_backbone(NAME, args=TINY)
    with torch.no_grad():  # embeddings as large as trained ones (timm starts them at std 0.02)
        net.pos_embed.normal_()
    fixed = timm.create_model("vit_tiny_patch16_224", num_classes=0,
                              **{**TINY, "img_size": size})  # strict size, no resampling
    state = dict(net.state_dict())
    state["pos_embed"] = _resampled_pos_embed(state["pos_embed"], 8, size // 4)
    fixed.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), fixed.eval()(x), rtol=1e-5, atol=1e-5)
        if size < 32:  # the embeddings matter: without resampling the result differs
            other = net.pos_embed[:, : 1 + (size // 4) ** 2]  # the first entries, as they are
            fixed.pos_embed.copy_(other)
            assert not torch.allclose(net(x), fixed(x), atol=1e-3)
