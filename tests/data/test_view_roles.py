"""Crop roles in the view spec: global / local per group, ``auto`` settled from the sizes, the
flat crop indices of a role, validation, ``--set``, config.json and resume."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from ssl_zoo.assemble import resolve, resume
from ssl_zoo.config import to_dict, view_spec_from_dict
from ssl_zoo.data.views import CropGroup, Views, ViewSpec, make_views, require_crops
from ssl_zoo.errors import ConfigError


def _spec(*groups: tuple[int, int, str]) -> ViewSpec:
    return ViewSpec(groups=[CropGroup(count=c, size=s, role=r) for c, s, r in groups])


def test_auto_roles_global_at_the_largest_size_and_flat_indices_in_spec_order():
    spec = _spec((2, 32, "auto"), (3, 16, "auto"), (1, 32, "auto"), (0, 48, "auto"))
    # the count-0 group (48 px) has no crops: the largest size with crops is 32
    assert spec.group_roles() == ["global", "local", "global", "global"]
    assert spec.crop_roles() == ["global"] * 2 + ["local"] * 3 + ["global"]
    assert spec.crop_indices("global") == [0, 1, 5]
    assert spec.crop_indices("local") == [2, 3, 4]
    assert spec.crop_indices() == spec.crop_indices("global")


def test_explicit_roles_win_over_the_sizes():
    spec = _spec((2, 32, "local"), (2, 16, "global"), (1, 16, "auto"))
    assert spec.group_roles() == ["local", "global", "local"]
    assert spec.crop_indices("global") == [2, 3]
    with pytest.raises(ValueError, match="unknown crop role 'teacher'"):
        spec.crop_indices("teacher")


def test_builtin_defaults_name_their_roles():
    swav = resolve({}, ["views.groups.1.count=4"], open_data=False).view_spec
    assert [g.role for g in swav.groups] == ["global", "local"]
    assert swav.crop_indices("global") == [0, 1] and swav.crop_indices("local") == [2, 3, 4, 5]
    moco = resolve({}, ["method=moco"], open_data=False).view_spec
    assert [g.role for g in moco.groups] == ["global"]
    simclr = resolve({}, ["method=simclr", "method.num_local_crops=2",
                          "method.local_crop_size=32"], open_data=False).view_spec
    assert [(g.size, g.role) for g in simclr.groups] == [(32, "global"), (32, "local")]


def test_role_set_saved_and_resumed():
    run = resolve({}, ["views.groups.1.count=4", "views.groups.1.role=global"],
                  open_data=False)
    assert run.view_spec.crop_indices("global") == list(range(6))
    saved = run.summary()  # what config.json holds
    assert [g["role"] for g in saved["views"]["groups"]] == ["global", "global"]
    again = resolve(saved, [], open_data=False)  # --resume: the saved config is the base
    assert again.view_spec == run.view_spec
    assert view_spec_from_dict(to_dict(run.view_spec)) == run.view_spec


def test_auto_is_settled_in_the_effective_config():
    given = {"views": {"groups": [{"count": 2, "size": 32, "role": "auto"},
                                  {"count": 3, "size": 16, "role": "auto"}]}}
    run = resolve(given, [], open_data=False)
    assert [g["role"] for g in run.summary()["views"]["groups"]] == ["global", "local"]


def test_unknown_role_is_a_one_line_error_naming_the_group():
    with pytest.raises(ConfigError, match=r"^views\.groups\.1\.role: unknown crop role "
                                          r"'lokal'; did you mean 'local'") as err:
        resolve({}, ["views.groups.1.count=4", "views.groups.1.role=lokal"], open_data=False)
    assert "\n" not in str(err.value)


def test_require_crops_says_what_is_missing():
    spec = _spec((1, 32, "global"), (4, 16, "local"))
    with pytest.raises(ConfigError, match=r"dino needs at least 2 global crops, the view spec "
                                          r"has 1 \(groups 0: 1x32 global, 1: 4x16 local\)"):
        require_crops(spec, "global", 2, "dino")
    assert require_crops(spec, "local", 4, "dino") == [1, 2, 3, 4]


def test_views_carry_the_roles_and_roles_do_not_change_the_crops():
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    a = make_views(images, _spec((2, 16, "auto"), (2, 8, "auto")),
                   torch.Generator().manual_seed(0))
    b = make_views(images, _spec((2, 16, "local"), (2, 8, "global")),
                   torch.Generator().manual_seed(0))
    assert a.roles == ["global", "global", "local", "local"] and a.crop_indices("local") == [2, 3]
    assert b.crop_indices("global") == [2, 3]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for moved in (b.to(torch.device("cpu")), pickle.loads(pickle.dumps(b))):
        assert moved.roles == b.roles
    # without roles (a direct call): the largest crops are global
    assert Views.from_crops([a[0], a[2], a[1]]).roles == ["global", "local", "global"]
    with pytest.raises(ValueError, match="one role"):
        Views.from_crops([a[0], a[2]], roles=["global"])


def test_a_config_saved_before_roles_resumes_unchanged(tmp_path):
    """config.json of a run made before groups had roles (no ``role`` key): the roles come from
    the method's default (SwAV: global, local) and are no difference; a changed field is."""
    run = resolve({}, ["views.groups.1.count=4"], open_data=False)
    saved = run.summary()
    for g in saved["views"]["groups"]:
        del g["role"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again = resume(tmp_path, open_data=False)
    assert [g.role for g in again.view_spec.groups] == ["global", "local"]
    assert again.view_spec == run.view_spec
    with pytest.raises(ConfigError, match=r"views\.groups\.1\.role \('local' -> 'global'\)"):
        saved["views"]["groups"][1]["role"] = "local"
        (tmp_path / "config.json").write_text(json.dumps(saved))
        resume(tmp_path, ["views.groups.1.role=global"], open_data=False)


def test_crop_list_problem_and_the_two_views_check():
    """The shared rule of a method's crop list (SwAV's and DeepCluster-v2's crops_for_assign)
    and the two-views check (Barlow Twins, VICReg), by hand."""
    import pytest

    from ssl_zoo.data.views import CropGroup, ViewSpec, crop_list_problem, require_two_views
    from ssl_zoo.errors import ConfigError

    assert crop_list_problem("crops_for_assign", (0, 1), 2) is None
    assert crop_list_problem("crops_for_assign", (1,)) is None  # crop count not known yet
    assert "at least one crop" in crop_list_problem("crops_for_assign", ())
    assert "twice" in crop_list_problem("crops_for_assign", (0, 0), 4)
    assert "0..1" in crop_list_problem("crops_for_assign", (0, 2), 2)
    assert "0..3" in crop_list_problem("crops_for_assign", (-1,), 4)

    pair = ViewSpec(groups=[CropGroup(count=1, size=16), CropGroup(count=1, size=16)])
    require_two_views(pair, "X")
    for bad in ([CropGroup(count=2, size=16), CropGroup(count=1, size=8)],
                [CropGroup(count=1, size=16), CropGroup(count=1, size=8)],
                [CropGroup(count=3, size=16)]):
        with pytest.raises(ConfigError, match="^X trains on exactly 2 crops of one size"):
            require_two_views(ViewSpec(groups=bad), "X")
