"""Shared fixtures: small, fast, deterministic; no test reads ../shared or the network."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ALL_METHODS = ["swav", "simclr", "moco", "pcl", "dino", "byol", "barlowtwins", "vicreg",
               "deepclusterv2", "selav2"]
"""Every method the conformance kit (``ssl_zoo.testing``) checks in tests/test_conformance.py:
a registered name, or ``package.module:Class`` for one not installed yet. Add yours here."""

CHECK_OPTIONS: dict[str, dict] = {
    # per method, optional: "sets" (--set assignments for the trainer's checks on the kit's
    # 64 images of 16 px) and "two_ranks" (the 2-ranks check's "config" fields, crop "sizes"
    # as (count, size) per group, and "steps")
    "swav": {"sets": ["method.num_prototypes=8"],
             "two_ranks": {"config": {"num_prototypes": 12, "feat_dim": 8, "hidden_dim": 16,
                                      "queue_length": 16, "queue_start_epoch": 0},
                           "sizes": [(2, 8), (2, 4)], "steps": 4}},
    "simclr": {"two_ranks": {"sizes": [(2, 8)], "steps": 2}},
    "moco": {"sets": ["method.queue_length=32", "method.shuffle_bn_groups=2"],
             "two_ranks": {"config": {"queue_length": 24, "proj_dim": 8,
                                      "shuffle_bn_groups": 1},
                           "sizes": [(2, 8)], "steps": 3}},
    "pcl": {"sets": ["method.queue_length=32", "method.warmup_epochs=0",
                     "method.num_clusters=[4,6]", "method.kmeans_iters=3",
                     "method.kmeans_redo=1", "train.optimizer=adamw"],
            "two_ranks": {"config": {"queue_length": 24, "proj_dim": 8, "shuffle_bn_groups": 1,
                                     "warmup_epochs": 0, "num_clusters": (2, 3),
                                     "num_negative_prototypes": 1},
                          "sizes": [(2, 8)], "steps": 2}},
    # two global crops (one group each, as the default views) and two local ones: the centre
    # is all-reduced, the last layer frozen at step 0 and trained at step 1 (a third step
    # would use 0.5 of the tolerance on float32 rounding alone; two use 0.09)
    "dino": {"sets": ["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16",
                      "views.groups.2.count=2"],
             "two_ranks": {"config": {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8},
                           "sizes": [(1, 8), (1, 8), (2, 4)], "steps": 2}},
    "byol": {"sets": ["method.proj_hidden_dim=32", "method.pred_hidden_dim=32",
                      "method.proj_dim=16"],
             "two_ranks": {"config": {"proj_hidden_dim": 16, "proj_dim": 8,
                                      "pred_hidden_dim": 16},
                           "sizes": [(1, 8), (1, 8)], "steps": 3}},
    # one group per view, as their default (asymmetric) views; small heads for speed. The
    # 2-ranks check's SGD steps (lr 0.5) on the unscaled loss (about 12 here) move weights by
    # about 3 per step, which amplifies float32 rounding past the check's tolerance (one
    # process alone, float32 against float64: 5.8x); the official first release's loss scale
    # 0.024 keeps the steps in the regime training uses (0.05 of the tolerance)
    "barlowtwins": {
        "sets": ["method.proj_hidden_dim=64", "method.proj_dim=64", "train.optimizer=lars"],
        "two_ranks": {"config": {"proj_hidden_dim": 16, "proj_dim": 12, "loss_scale": 0.024},
                      "sizes": [(1, 8), (1, 8)], "steps": 3}},
    "vicreg": {
        "sets": ["method.expander_hidden_dim=64", "method.expander_dim=64"],
        "two_ranks": {"config": {"expander_hidden_dim": 16, "expander_dim": 12},
                      "sizes": [(1, 8), (1, 8)], "steps": 3}},
    "deepclusterv2": {
        "sets": ["method.num_prototypes=[4,6]"],
        "two_ranks": {"config": {"num_prototypes": (2, 3), "feat_dim": 8, "hidden_dim": 16},
                      "sizes": [(2, 8), (2, 4)], "steps": 3}},
    "selav2": {
        "sets": ["method.num_prototypes=[4,6]"],
        "two_ranks": {"config": {"num_prototypes": (2, 3), "feat_dim": 8, "hidden_dim": 16},
                      "sizes": [(2, 8), (2, 4)], "steps": 3}},
}

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
