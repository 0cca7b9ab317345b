"""Every method passes the conformance kit a plug-in author runs on theirs (ssl_zoo/testing.py):
no host sync in a steady-state step, 2 gloo ranks = 1 process (loss and update), and a run
killed with SIGKILL resumes bit-identical. The methods: ``ALL_METHODS`` in tests/conftest.py."""

from __future__ import annotations

import pytest
from conftest import ALL_METHODS, CHECK_OPTIONS

from ssl_zoo import registry, testing


def _options(name: str) -> dict:
    return CHECK_OPTIONS.get(name, {})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_no_host_sync_in_steady_state_steps(name, tmp_path):
    testing.check_sync_free_step(registry.get_method(name), sets=_options(name).get("sets", ()),
                                 directory=tmp_path)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_two_ranks_equal_one_process(name):
    cls = registry.get_method(name)
    two = dict(_options(name).get("two_ranks", {}))
    config = cls.Config(**two.pop("config", {}))
    testing.check_two_ranks_equal_one(cls, config, **two)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_run_killed_with_sigkill_resumes_bit_identical(name, tmp_path):
    testing.check_exact_resume(registry.get_method(name), sets=_options(name).get("sets", ()),
                               directory=tmp_path)


SYNCING = '''
import torch
import torch.nn.functional as F

from ssl_zoo import Method, StepOutput
from ssl_zoo.data.views import CropGroup, ViewSpec


class Syncing(Method):
    """Reads a device value on the host in every step (what the sync check must catch)."""

    name = "syncing"

    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.head = torch.nn.Linear(feature_dim, 4)

    @classmethod
    def default_views(cls, config, image_size):
        return ViewSpec(groups=[CropGroup(count=2, size=image_size)])

    def forward(self, views, ctx=None):
        z = [F.normalize(self.head(f), dim=1) for f in self.encode_views(views)]
        loss = 2 - 2 * (z[0] * z[1]).sum(1).mean()
        return StepOutput(loss, {"agreement": float(loss.detach())})
'''


def test_the_sync_check_fails_on_a_method_that_reads_the_device(tmp_path):
    path = tmp_path / "syncing.py"
    path.write_text(SYNCING)
    cls = registry.get_method(f"{path}:Syncing")
    assert testing.method_spec(cls) == f"{path}:Syncing"  # how other processes load it
    with pytest.raises(AssertionError, match=r"Syncing: operations that wait for the host in "
                                             r"steady-state steps .*aten::_local_scalar_dense"):
        testing.check_sync_free_step(cls, directory=tmp_path / "run")
