"""Assembly: the effective config is resolved once, saved whole, and restored on --resume."""

from __future__ import annotations

import json

import pytest

from ssl_zoo.assemble import config_differences, merge_views, resolve
from ssl_zoo.cli import main
from ssl_zoo.errors import ConfigError


def test_effective_config_has_every_method_field_and_the_full_view_spec():
    run = resolve({}, ["method=swav"], open_data=True)
    cfg = run.config
    assert set(cfg.method_config) == set(type(run.method_config).__dataclass_fields__)
    # at 32 px SwAV's local group is off (count 0), so the effective spec has the 2 global crops
    assert [g["count"] for g in cfg.views["groups"]] == [2]
    assert cfg.views["mean"] == list(run.view_spec.mean)
    multi = resolve({}, ["method=swav", "views.groups.1.count=4"], open_data=False).config
    assert [(g["count"], g["size"]) for g in multi.views["groups"]] == [(2, 32), (4, 16)]
    assert run.image_size == cfg.image_size == 32
    # normalisation from the source: the demo set is CIFAR-10
    assert run.view_spec.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_npz_statistics_are_measured_from_its_images(tmp_path):
    import numpy as np

    x = np.zeros((20, 8, 8, 3), dtype=np.uint8)
    x[..., 0] = 255  # red everywhere
    np.savez(tmp_path / "red.npz", x_train=x, y_train=np.zeros(20, int), x_test=x[:4],
             y_test=np.zeros(4, int))
    run = resolve({}, ["method=simclr", f"dataset=npz:{tmp_path / 'red.npz'}",
                       "train.batch_size=8"])
    assert run.view_spec.mean == (1.0, 0.0, 0.0)
    assert run.view_spec.std == (0.001, 0.001, 0.001)  # constant channels: the floor


def test_merge_views_keeps_a_full_spec_and_completes_a_partial_one():
    default = resolve({}, [], open_data=False).summary()["views"]
    assert merge_views(default, default) == default
    partial = merge_views(default, {"groups": [{"size": 24}]})
    assert [g["size"] for g in partial["groups"]] == [24]
    assert partial["groups"][0]["scale"] == default["groups"][0]["scale"]


def test_config_differences_ignore_fields_a_saved_config_does_not_have():
    saved = {"train": {"epochs": 3}, "method": "swav"}
    assert config_differences(saved, {"train": {"epochs": 3, "logger": "auto"},
                                      "method": "swav"}) == []
    assert config_differences(saved, {"train": {"epochs": 4}, "method": "swav"}) == [
        "train.epochs (3 -> 4)"]


def test_a_changed_default_in_code_never_changes_a_resumed_run(tmp_path, toy_method_file,
                                                               capsys):
    run = tmp_path / "run"
    args = ["--method", f"{toy_method_file}:Toy", "--batch-size", "100", "--epochs", "1",
            "--no-eval", "--no-progress", "--set", "train.max_steps=2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["method_config"]["out_dim"] == 16
    # the method's default changes in code after the run started
    toy_method_file.write_text(toy_method_file.read_text().replace(
        "out_dim: int = 16", "out_dim: int = 32"))
    saved["train"]["max_steps"] = 4  # let the resumed run go on (an allowed edit of the file)
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # out_dim 16 restored
    assert json.loads((run / "config.json").read_text())["method_config"]["out_dim"] == 16
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "method.out_dim=8"]) == 2
    assert "method_config.out_dim (16 -> 8)" in capsys.readouterr().err


def test_dry_run_resolves_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--method", "swav", "--set", "views.groups.1.count=6",
                 "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert '"count": 6' in printed and '"num_prototypes": 100' in printed
    assert not out.exists()
    assert main(["compare", "--methods", "swav,moco", "--out", str(out), "--dry-run"]) == 0
    assert not out.exists() and "moco" in capsys.readouterr().out


def test_bad_views_are_one_line_errors():
    with pytest.raises(ConfigError, match="every group has count 0"):
        resolve({}, ["views.groups.0.count=0", "views.groups.1.count=0"], open_data=False)
    with pytest.raises(ConfigError, match="index 5 out of range"):
        resolve({}, ["views.groups.5.count=2"], open_data=False)
