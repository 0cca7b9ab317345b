from __future__ import annotations

import json

import pytest

from ssl_zoo.assemble import resolve
from ssl_zoo.config import (
    RunConfig,
    apply_override,
    load_config_file,
    to_dict,
    validate_run_config,
    validate_view_spec,
    view_spec_from_dict,
)
from ssl_zoo.data.views import CropGroup, ViewSpec
from ssl_zoo.errors import ConfigError

METHOD_FIELDS = {"num_prototypes", "epsilon", "queue_length"}


def build(base, sets):
    """The effective config of a SwAV run on the demo set, resolved without opening data."""
    return resolve(base, sets, open_data=False).config


def test_sets_override_file_values_and_are_typed():
    cfg = build(
        {"train": {"epochs": 3}, "method_config": {"epsilon": 0.05}},
        ["train.epochs=5", "batch_size=64", "method.num_prototypes=30", "epsilon=0.03",
         "eval.linear=false", "dataset=npz:/x.npz", "image_size=32"],
    )
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 64
    assert cfg.method_config["epsilon"] == 0.03 and cfg.method_config["num_prototypes"] == 30
    assert cfg.method_config["temperature"] == 0.1  # every method field, defaults included
    assert cfg.eval.linear is False and cfg.dataset == "npz:/x.npz"


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 'ten'"):
        build({}, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"train.lr_per_256: expected a number"):
        build({"train": {"lr_per_256": "fast"}}, [])


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown config field 'epoch'.*'epochs'"):
        build({}, ["epoch=3"])
    with pytest.raises(ConfigError,
                       match=r"unknown config field train.epohcs; did you mean 'epochs'"):
        build({"train": {"epohcs": 3}}, [])


def test_ambiguous_bare_key_must_be_qualified():
    with pytest.raises(ConfigError, match="ambiguous"):
        apply_override({}, "epochs=3", {"epochs"} | METHOD_FIELDS)


def test_impossible_values():
    for sets, msg in ((["train.epochs=0"], "epochs must be >= 1"),
                      (["train.optimizer=adm"], "did you mean 'adam'"),
                      (["train.warmup_epochs=20", "train.epochs=2"], "warmup_epochs")):
        with pytest.raises(ConfigError, match=msg):
            build({}, sets)
    cfg = RunConfig()
    cfg.train.lr_per_256 = 0.0
    with pytest.raises(ConfigError, match="lr_per_256 must be > 0"):
        validate_run_config(cfg)


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("method: swav\ntrain:\n  epochs: 2\n  optimizer: lars\n")
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"train": {"epochs": 4}}))
    assert build(load_config_file(y), []).train.optimizer == "lars"
    assert build(load_config_file(j), []).train.epochs == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.yaml")


def test_the_effective_config_round_trips_through_json():
    """config.json holds the effective config; read back, it resolves to the same typed run."""
    run = resolve({}, ["train.epochs=7", "views.groups.1.count=6", "method.epsilon=0.04"],
                  open_data=False)
    again = resolve(json.loads(json.dumps(to_dict(run.config))), [], open_data=False)
    assert again.config == run.config
    assert again.method_config == run.method_config and again.view_spec == run.view_spec
    assert run.view_spec.groups[1].count == 6 and run.method_config.epsilon == 0.04


def test_view_spec_overrides_and_validation():
    spec = view_spec_from_dict({"groups": [{"count": 2, "size": 32}, {"count": 4, "size": 16}]})
    assert [g.count for g in spec.groups] == [2, 4]
    data = {"views": to_dict(spec)}
    apply_override(data, "views.groups.1.count=6", set())
    assert view_spec_from_dict(data["views"]).groups[1].count == 6
    with pytest.raises(ConfigError, match="larger than the 32-px images"):
        validate_view_spec(ViewSpec(groups=[CropGroup(size=64)]), 32)
    with pytest.raises(ConfigError, match="scale"):
        validate_view_spec(ViewSpec(groups=[CropGroup(size=16, scale=(0.5, 0.2))]), 32)
    with pytest.raises(ConfigError, match="views.groups.0.cont"):
        view_spec_from_dict({"groups": [{"cont": 2}]})
