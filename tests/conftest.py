"""Shared fixtures: small, fast, deterministic; no test reads ../shared or the network."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Built-in methods added in this tree but not yet in the installed entry points (the editable
# install's metadata is only rewritten by a reinstall): registered by name for the tests, so
# that recipes and `--set method=NAME` resolve; skipped once the entry points have them.
from ssl_zoo.registry import method_names, register_method  # noqa: E402
from ssl_zoo_methods.byol import BYOL  # noqa: E402
from ssl_zoo_methods.dino import DINO  # noqa: E402

for _cls in (DINO, BYOL):
    if _cls.name not in method_names():
        register_method(_cls.name)(_cls)

TOY_METHOD = '''
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo import Method, MethodConfig, StepOutput
from ssl_zoo.data.views import CropGroup, ViewSpec


@dataclass
class ToyConfig(MethodConfig):
    """Config of a toy method: cosine agreement of two views."""

    out_dim: int = 16
    """Projection size."""
    fail_at_step: int = -1
    """Return a NaN loss from this call on (tests the non-finite path)."""


class Toy(Method):
    name = "toy"
    description = "pull two views of an image together (a test method)"
    Config = ToyConfig

    def __init__(self, backbone, feature_dim, config=None):
        super().__init__(backbone, feature_dim, config)
        self.head = torch.nn.Linear(feature_dim, self.config.out_dim)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @classmethod
    def default_views(cls, config, image_size):
        return ViewSpec(groups=[CropGroup(count=2, size=min(16, image_size))])

    def forward(self, views, ctx=None):
        self.calls += 1
        z = [F.normalize(self.head(f), dim=1) for f in self.encode_views(views)]
        loss = 2 - 2 * (z[0] * z[1]).sum(1).mean()
        if 0 <= self.config.fail_at_step < int(self.calls):
            loss = loss * float("nan")
        return StepOutput(loss, {"agreement": (z[0] * z[1]).sum(1).mean().detach()},
                          debug={"z0": z[0].detach()})
'''


@pytest.fixture
def toy_method_file(tmp_path):
    """A user's own method in a file outside the package (plug-in path 3)."""
    path = tmp_path / "toy_method.py"
    path.write_text(TOY_METHOD)
    return path


@pytest.fixture(autouse=True)
def narrow_columns(monkeypatch):
    """Every test runs with a narrow ``COLUMNS``: what the commands print must not depend on it."""
    monkeypatch.setenv("COLUMNS", "40")
