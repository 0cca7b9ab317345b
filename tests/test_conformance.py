"""Every method passes the conformance kit a plug-in author runs on theirs (ssl_zoo/testing.py):
no host sync in a steady-state step, 2 gloo ranks = 1 process (loss and update), and a run
killed with SIGKILL resumes bit-identical. The methods: ``ALL_METHODS`` in tests/conftest.py."""

from __future__ import annotations

import pytest
import torch
from conftest import ALL_METHODS, CHECK_OPTIONS

from ssl_zoo import registry, testing


def _options(name: str) -> dict:
    return CHECK_OPTIONS.get(name, {})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_no_host_sync_in_steady_state_steps(name, tmp_path):
    testing.check_sync_free_step(registry.get_method(name), sets=_options(name).get("sets", ()),
                                 directory=tmp_path)


def _two_ranks_setting(name: str) -> tuple[type, object, dict]:
    """(method class, its config, the other keyword arguments) of the 2-ranks check."""
    cls = registry.get_method(name)
    two = dict(_options(name).get("two_ranks", {}))
    return cls, cls.Config(**two.pop("config", {})), two


@pytest.mark.parametrize("name", ALL_METHODS)
def test_two_ranks_equal_one_process(name):
    cls, config, two = _two_ranks_setting(name)
    testing.check_two_ranks_equal_one(cls, config, **two)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_the_two_ranks_setting_tests_logic_not_float_rounding(name):
    # one process in float32 against float64 in the 2-ranks check's own setting: if rounding
    # alone came near the tolerance, that check would pass or fail by summation order
    cls, config, two = _two_ranks_setting(name)
    used, key = testing.float32_noise(cls, config, **two)
    assert used < 0.25, f"{name}: float32 rounding uses {used:.2f} of the tolerance on {key}"


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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL_METHODS)
def test_no_host_sync_on_cuda(name, tmp_path):
    """The same check on a GPU, where CUDA's own detector also fails any synchronising call."""
    testing.check_sync_free_step(registry.get_method(name), sets=_options(name).get("sets", ()),
                                 device="cuda", directory=tmp_path)


# the other two checks fail too on methods that break what they check (slow: several processes)
BROKEN = '''
import torch
import torch.nn.functional as F

from ssl_zoo import Method, StepOutput
from ssl_zoo.data.views import CropGroup, ViewSpec


class Base(Method):
    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.head = torch.nn.Linear(feature_dim, 4)

    @classmethod
    def default_views(cls, config, image_size):
        return ViewSpec(groups=[CropGroup(count=2, size=image_size)])

    def embed(self, views):
        return [F.normalize(self.head(f), dim=1) for f in self.encode_views(views)]


class LocalCentering(Base):
    """Centres the embeddings with this rank's batch mean: 2 ranks differ from 1 process."""

    name = "local_centering"

    def forward(self, views, ctx=None):
        z = [x - x.mean(0) for x in self.embed(views)]
        return StepOutput(((z[0] - z[1]) ** 2).sum(1).mean() - z[0].var(0).sum())


class ForgetfulCounter(Base):
    """Keeps a step counter the loss depends on outside its state_dict: a resumed run differs."""

    name = "forgetful_counter"

    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.steps_seen = 0

    def forward(self, views, ctx=None):
        z = self.embed(views)
        return StepOutput((1 + 0.1 * self.steps_seen) * (2 - 2 * (z[0] * z[1]).sum(1).mean()))

    def after_optimizer_step(self, ctx):
        self.steps_seen += 1
'''


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    return path


@pytest.mark.slow
def test_the_two_ranks_check_fails_on_a_method_that_ignores_the_other_rank(broken):
    cls = registry.get_method(f"{broken}:LocalCentering")
    with pytest.raises(AssertionError, match=r"LocalCentering: .* rank 0 of 2"):
        testing.check_two_ranks_equal_one(cls)


@pytest.mark.slow
def test_the_resume_check_fails_on_a_method_that_forgets_its_state(broken, tmp_path):
    cls = registry.get_method(f"{broken}:ForgetfulCounter")
    with pytest.raises(AssertionError, match=r"differ"):
        testing.check_exact_resume(cls, directory=tmp_path / "runs")
