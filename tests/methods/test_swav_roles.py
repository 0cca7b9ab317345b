"""SwAV's assigned crops through the view spec's roles: ``crops_for_assign`` null (the default)
is the spec's global crops, settled in the effective config; an explicit list still wins."""

from __future__ import annotations

import pytest
import torch
from test_swav import make_model, make_views

from ssl_zoo.assemble import resolve
from ssl_zoo.errors import ConfigError


def test_default_assigns_the_global_crops_settled_in_the_config():
    run = resolve({}, ["views.groups.1.count=4"], open_data=False)
    assert run.method_config.crops_for_assign == (0, 1)
    assert run.summary()["method_config"]["crops_for_assign"] == [0, 1]  # config.json
    wide = resolve({}, ["views.groups.1.count=2", "views.groups.1.role=global"],
                   open_data=False)
    assert wide.method_config.crops_for_assign == (0, 1, 2, 3)
    again = resolve(wide.summary(), [], open_data=False)  # resume: the saved config
    assert again.method_config.crops_for_assign == (0, 1, 2, 3)
    given = resolve({}, ["views.groups.1.count=4", "method.crops_for_assign=[0,3]"],
                    open_data=False)
    assert given.method_config.crops_for_assign == (0, 3)


def test_no_global_crop_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^views: SwAV .* needs at least 1 global crop, the "
                                          r"view spec has 0 \(groups 0: 2x32 local\)"):
        resolve({}, ["views.groups.0.role=local"], open_data=False)


def test_unsettled_default_equals_the_papers_crops_exactly():
    """A SwAV built directly (crops_for_assign null) takes the global crops of its views (the
    two largest): the same loss, codes and gradients as crops_for_assign (0, 1)."""
    views = make_views(n_local=3)
    assert views.crop_indices("global") == [0, 1]
    a, b = make_model(), make_model(crops_for_assign=(0, 1))
    out_a, out_b = a(views), b(views)
    assert torch.equal(out_a.loss, out_b.loss) and set(out_a.debug) == set(out_b.debug)
    assert all(torch.equal(out_a.debug[k], out_b.debug[k]) for k in out_a.debug)
    out_a.loss.backward()
    out_b.loss.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad), name


def test_roles_of_the_views_decide_and_must_fit_the_queues():
    views = make_views(n_local=2)
    views.roles = ["global", "local", "global", "local"]
    out = make_model()(views)
    assert {k for k in out.debug if k.startswith("codes_")} == {"codes_0", "codes_1"}
    views.roles = ["global", "global", "global", "local"]
    assert len([k for k in make_model()(views).debug if k.startswith("codes_")]) == 3
    with pytest.raises(ConfigError, match=r"2 queues for 3 assigned crops \(0, 1, 2\)"):
        make_model(queue_length=16)(views)
