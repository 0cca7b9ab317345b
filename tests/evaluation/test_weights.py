"""Weights of any layout: features of each layout equal torchvision's with the same weights;
mismatches and unsafe or broken files are one-line errors through the CLI."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from ssl_zoo.backbones import build_backbone
from ssl_zoo.cli import main
from ssl_zoo.errors import CheckpointError
from ssl_zoo.evaluation.weights import load_weights_into


def torchvision_reference(name: str, seed: int) -> nn.Module:
    """A randomly initialised torchvision ResNet (no download) with statistics in its BatchNorms
    (so eval-mode features depend on every buffer), classifier removed."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return net.eval()


def official_swav_layout(net: nn.Module) -> dict[str, torch.Tensor]:
    """What the official SwAV release holds: DataParallel's ``module.`` prefix, the backbone
    without its classifier, then the projection head and the prototypes."""
    sd = OrderedDict((f"module.{k}", v) for k, v in net.state_dict().items()
                     if not k.startswith("fc."))
    dim = net.fc.in_features
    sd["module.projection_head.0.weight"] = torch.randn(2048, dim)
    sd["module.projection_head.0.bias"] = torch.randn(2048)
    sd["module.projection_head.1.weight"] = torch.ones(2048)
    sd["module.projection_head.3.weight"] = torch.randn(128, 2048)
    sd["module.prototypes.weight"] = torch.randn(3000, 128)
    return sd


def features_of_file(path, name: str, x: torch.Tensor) -> torch.Tensor:
    backbone, _ = build_backbone(name, stem="imagenet", image_size=x.shape[-1])
    with torch.no_grad():
        return load_weights_into(backbone, path, name).eval()(x)


def reference_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.fc = nn.Identity()
    with torch.no_grad():
        return net(x)


def test_official_swav_layout_gives_torchvisions_features(tmp_path):
    net = torchvision_reference("resnet18", seed=0)
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(official_swav_layout(net), path)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = features_of_file(path, "resnet18", x)
    ref = reference_features(net, x)
    assert ours.shape == (4, 512)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.slow
def test_official_swav_resnet50_layout_gives_torchvisions_features(tmp_path):
    net = torchvision_reference("resnet50", seed=0)
    path = tmp_path / "swav.pth.tar"
    torch.save(official_swav_layout(net), path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(features_of_file(path, "resnet50", x), reference_features(net, x),
                               rtol=0, atol=0)


def _layouts(net: nn.Module) -> dict[str, object]:
    tv = net.state_dict()
    no_fc = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    lightly_backbone = nn.Sequential(*list(net.children())[:-1])  # lightly's examples
    return {
        "torchvision": tv,
        "our export": no_fc,
        "our checkpoint": {"format": 1, "config": "{}", "step": 3,
                           "model": {**{f"backbone.{k}": v for k, v in no_fc.items()},
                                     "head.0.weight": torch.randn(8, 512)}},
        "lightly": {"epoch": 1, "state_dict": {
            **{f"backbone.{k}": v for k, v in lightly_backbone.state_dict().items()},
            "projection_head.layers.0.weight": torch.randn(8, 512),
            "prototypes.layers.weight": torch.randn(10, 8)}},
        "solo-learn": {"epoch": 1, "state_dict": {
            **{f"backbone.{k}": v for k, v in no_fc.items()},
            **{f"momentum_backbone.{k}": v + 1 for k, v in no_fc.items()},
            "projector.0.weight": torch.randn(8, 512), "classifier.weight": torch.randn(10, 512),
            "prototypes.weight": torch.randn(10, 8)}},
        "DDP of a plain model": {f"module.{k}": v for k, v in tv.items()},
    }


@pytest.mark.parametrize("layout", ["torchvision", "our export", "our checkpoint", "lightly",
                                    "solo-learn", "DDP of a plain model"])
def test_every_known_layout_gives_torchvisions_features(tmp_path, layout):
    net = torchvision_reference("resnet18", seed=2)
    path = tmp_path / "w.pt"
    torch.save(_layouts(net)[layout], path)
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    ref = reference_features(net, x)
    torch.testing.assert_close(features_of_file(path, "resnet18", x), ref, rtol=0, atol=0)


def test_mismatches_name_keys_and_what_was_expected(tmp_path):
    wide = tmp_path / "r34.pt"
    torch.save(torchvision_reference("resnet34", seed=0).state_dict(), wide)
    with pytest.raises(CheckpointError, match=r"does not match --backbone resnet18: .*unmatched "
                                              r"key.*layer1\.2\."):
        features_of_file(wide, "resnet18", torch.zeros(1, 3, 32, 32))
    junk = tmp_path / "junk.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, junk)
    with pytest.raises(CheckpointError, match=r"no tensor matches resnet18 .*encoder\.weight.*"
                                              r"expected keys such as conv1\.weight"):
        features_of_file(junk, "resnet18", torch.zeros(1, 3, 32, 32))
    cifar = tmp_path / "cifar_stem.pt"
    model, _ = build_backbone("resnet18", stem="cifar", image_size=32)
    torch.save(model.state_dict(), cifar)
    with pytest.raises(CheckpointError, match=r"conv1\.weight has shape \(64, 3, 3, 3\), "
                                              r"resnet18 expects \(64, 3, 7, 7\)"):
        features_of_file(cifar, "resnet18", torch.zeros(1, 3, 32, 32))


def _assert_one_line(code, err, message):
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_eval_weights_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    net = torchvision_reference("resnet18", seed=0)
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(official_swav_layout(net), path)
    out = tmp_path / "ev"
    fast = ["--set", "image_size=16", "--set", "eval.pictures=false",
            "--set", "eval.baseline=false",
            "--set", "eval.linear=false", "--set", "eval.clustering=false"]
    assert main(["eval", "--weights", str(path), "--backbone", "resnet18", "--dataset", "demo",
                 "--out", str(out), *fast]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["backbone"] == "resnet18" and ev["feature_dim"] == 512
    assert 0.0 <= ev["knn"]["k20_t0.07"]["top1"] <= 1.0 and ev["rankme"]["rank"] > 1.0
    capsys.readouterr()
    base = ["eval", "--weights", str(path), "--dataset", "demo", "--out", str(out), *fast]
    _assert_one_line(main([*base, "--backbone", "resnet50"]), capsys.readouterr().err,
                     "does not match --backbone resnet50")
    _assert_one_line(main(base), capsys.readouterr().err, "also give --backbone")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    _assert_one_line(main(["eval", "--weights", str(bad), "--backbone", "resnet18", "--dataset",
                           "demo", "--out", str(out)]), capsys.readouterr().err, str(bad))
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": net.state_dict(), "args": argparse_like()}, pickled)
    _assert_one_line(main(["eval", "--weights", str(pickled), "--backbone", "resnet18",
                           "--dataset", "demo", "--out", str(out)]), capsys.readouterr().err,
                     "refusing to load it")
    _assert_one_line(main(["eval", "--weights", str(tmp_path / "missing.pt"), "--backbone",
                           "resnet18", "--dataset", "demo"]), capsys.readouterr().err,
                     "missing.pt")


class Namespace:
    """Stands for the ``argparse.Namespace`` of training arguments some releases pickle."""


def argparse_like() -> Namespace:
    return Namespace()
