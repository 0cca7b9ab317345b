from __future__ import annotations

import json

import pytest

from ssl_zoo.config import (
    RunConfig,
    apply_override,
    build_run_config,
    load_config_file,
    to_dict,
    validate_run_config,
    validate_view_spec,
    view_spec_from_dict,
)
from ssl_zoo.data.views import CropGroup, ViewSpec
from ssl_zoo.errors import ConfigError

METHOD_FIELDS = {"num_prototypes", "epsilon", "queue_length"}


def fields_of(_name):
    return METHOD_FIELDS


def test_sets_override_file_values_and_are_typed():
    cfg = build_run_config(
        {"train": {"epochs": 3}, "method_config": {"epsilon": 0.05}},
        ["train.epochs=5", "batch_size=64", "method.num_prototypes=30", "epsilon=0.03",
         "eval.linear=false", "dataset=npz:/x.npz"],
        fields_of,
    )
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 64
    assert cfg.method_config == {"epsilon": 0.03, "num_prototypes": 30}
    assert cfg.eval.linear is False and cfg.dataset == "npz:/x.npz"


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 'ten'"):
        build_run_config({}, ["train.epochs=ten"], fields_of)
    with pytest.raises(ConfigError, match=r"train.lr_per_256: expected a number"):
        build_run_config({"train": {"lr_per_256": "fast"}}, [], fields_of)


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown config field 'epoch'.*'epochs'"):
        build_run_config({}, ["epoch=3"], fields_of)
    with pytest.raises(ConfigError,
                       match=r"unknown config field train.epohcs; did you mean 'epochs'"):
        build_run_config({"train": {"epohcs": 3}}, [], fields_of)


def test_ambiguous_bare_key_must_be_qualified():
    with pytest.raises(ConfigError, match="ambiguous"):
        apply_override({}, "epochs=3", {"epochs"} | METHOD_FIELDS)


def test_impossible_values():
    for sets, msg in ((["train.epochs=0"], "epochs must be >= 1"),
                      (["train.optimizer=adm"], "did you mean 'adam'"),
                      (["train.warmup_epochs=20", "train.epochs=2"], "warmup_epochs")):
        cfg = build_run_config({}, sets, fields_of)
        with pytest.raises(ConfigError, match=msg):
            validate_run_config(cfg)


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("method: swav\ntrain:\n  epochs: 2\n  optimizer: lars\n")
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"train": {"epochs": 4}}))
    assert build_run_config(load_config_file(y), [], fields_of).train.optimizer == "lars"
    assert build_run_config(load_config_file(j), [], fields_of).train.epochs == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.yaml")


def test_round_trip_through_plain_data():
    cfg = RunConfig()
    cfg.train.epochs = 7
    again = build_run_config(json.loads(json.dumps(to_dict(cfg))), [], fields_of)
    assert again == cfg


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
