"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS).

Algorithm (Sec. 3.1, Fig. 2, App. A and J): an online network (encoder f_theta, projector
g_theta, predictor q_theta) and a target network (encoder and projector only) whose weights
xi are an exponential moving average of theta, the rate tau raised from tau_base = 0.996 to 1
by a cosine over training (Sec. 3.2). From two views v, v' of an image the online network
predicts the target's projection of the other view; with unit vectors, the loss of one
direction is ``||q(v) - z'(v')||^2 = 2 - 2 cos(q, z')`` (Eq. 2), and the loss is the sum of
both directions (the symmetrised L + L~), the target side without gradient. Projector and
predictor are MLPs Linear(4096) - BN - ReLU - Linear(256) (Sec. 3.2). The two views use the
paper's asymmetric augmentation (Table 6): view 1 always blurred, never solarised; view 2
blurred with p=0.1 and solarised with p=0.2.

The evaluated and exported network is the ONLINE encoder f_theta: "at the end of training, we
only keep the encoder f_theta" (Sec. 3.1), and the paper's linear and transfer results are
that encoder's (the target is the other choice, ``--set eval.network=target``).

Deviations: the small-scale defaults (width 1024 / 128 instead of 4096 / 256, base momentum
0.99 as solo-learn's CIFAR recipe) suit a few hundred steps on a CPU; the ImageNet recipe has
the paper's. Both views go through each head as one batch, so the heads' batch norm sees both
views' statistics together (the backbone does too once same-size groups share a pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import Views, ViewSpec, asymmetric_pair
from ssl_zoo.data.views.spec import IMAGENET_MEAN, IMAGENET_STD
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules.heads import mlp_head
from ssl_zoo.modules.momentum import ema_update_, momentum_at, momentum_copy, momentum_problem


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)`` (BYOL Eq. 2), float32 at least, no
    gradient through ``z`` (the target)."""
    dtype = torch.promote_types(p.dtype, torch.float32)  # float64 stays float64
    with torch.autocast(p.device.type, enabled=False):
        return 2 - 2 * F.cosine_similarity(p.to(dtype), z.detach().to(dtype), dim=-1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
              ) -> torch.Tensor:
    """The symmetrised BYOL loss (Sec. 3.1, L + L~): online predictions ``p1``, ``p2`` (B, d) of
    views 1 and 2 against the target projections ``z2``, ``z1`` of the other view, each term a
    batch mean of ``2 - 2 cos``; in [0, 8]."""
    return regression_loss(p1, z2).mean() + regression_loss(p2, z1).mean()


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class BYOLConfig(MethodConfig):
    """BYOL hyper-parameters; defaults suit a few thousand CIFAR-size images on a CPU (the
    paper's ImageNet values are in recipes/byol/)."""

    proj_hidden_dim: int = 1024
    """Hidden width of the projector MLP (paper: 4096)."""
    proj_dim: int = 128
    """Output size of projector and predictor (paper: 256)."""
    pred_hidden_dim: int = 1024
    """Hidden width of the predictor MLP (paper: 4096)."""
    momentum: float = 0.99
    """Target EMA rate tau at step 0 (paper: tau_base 0.996; 0.99 for short runs on small data,
    as solo-learn's CIFAR recipe), raised to 1 by momentum_schedule."""
    momentum_schedule: str = "cosine"
    """cosine (the paper: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2) or constant."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        for name in ("proj_hidden_dim", "proj_dim", "pred_hidden_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"method.{name} must be >= 1, got {getattr(self, name)}")
        problem = momentum_problem(self.momentum, self.momentum_schedule,
                                   "paper: 0.996; 0.99 for short runs")
        if problem:
            raise ConfigError(f"method.{problem}")
        if batch_size < 2:
            raise ConfigError(f"BYOL's batch-norm heads need at least 2 images per batch, got "
                              f"{batch_size}")


def byol_views(image_size: int) -> ViewSpec:
    """BYOL's two views (Table 6; :func:`~ssl_zoo.data.views.asymmetric_pair`) with a blur
    kernel of 10% of the crop, and ImageNet's normalisation at ImageNet sizes."""
    spec = asymmetric_pair(image_size, blur_kernel_frac=0.1)
    if image_size >= 192:
        spec.mean, spec.std = IMAGENET_MEAN, IMAGENET_STD
    return spec


class BYOL(Method):
    """Bootstrap your own latent: the online network predicts an EMA target's projection of
    the other view (Grill et al. 2020).

    Evaluated and exported network (``eval_networks``): the online encoder by default, as the
    paper (Sec. 3.1: "we only keep the encoder f_theta"); ``target`` is the other choice.
    """

    name = "byol"
    description = "BYOL: predict an EMA target's projection of the other view (Grill et al. 2020)"
    Config = BYOLConfig
    config: BYOLConfig
    default_eval_network: ClassVar[str] = "online"
    # at small scale BYOL wants more, smaller steps: on demo (40 epochs, seed 0) batch 64 gave
    # kNN k=20 0.386 against 0.357 at the trainer's 128 and 0.340 at 128 with lr x2 (random
    # init 0.332); the recipes set the papers' batches
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64}

    def __init__(self, backbone: nn.Module, feature_dim: int, config: BYOLConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.projector = mlp_head(feature_dim, c.proj_hidden_dim, c.proj_dim)
        self.predictor = mlp_head(c.proj_dim, c.pred_hidden_dim, c.proj_dim)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projector = momentum_copy(self.projector)

    def eval_networks(self) -> dict[str, nn.Module]:
        """The backbones evaluation and export may use: online (default) and target."""
        return {"online": self.backbone, "target": self.target_backbone}

    @classmethod
    def default_views(cls, config: BYOLConfig, image_size: int) -> ViewSpec:
        """Two views of the image size with the paper's asymmetric blur / solarisation
        (:func:`byol_views`)."""
        return byol_views(image_size)

    @classmethod
    def check_views(cls, config: BYOLConfig, spec: ViewSpec) -> None:
        """BYOL trains on exactly two crops per image."""
        if spec.num_crops != 2:
            raise ConfigError(f"{cls.name} trains on exactly 2 crops per image, the view spec "
                              f"has {spec.num_crops}; use two groups of count 1 (its default) "
                              "or one of count 2")

    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        if len(views) != 2:
            raise ConfigError(f"{self.name} trains on exactly 2 crops per image, got "
                              f"{len(views)}")
        online = torch.cat(self.encode_views(views))
        p1, p2 = self.predictor(self.projector(online)).chunk(2)
        with torch.no_grad():
            target = torch.cat(self.encode_views(views, self.target_backbone))
            z1, z2 = self.target_projector(target).chunk(2)
        loss = byol_loss(p1, p2, z1, z2)
        with torch.no_grad():
            agreement = F.cosine_similarity(p1.float(), z2.float(), dim=-1).mean()
        return StepOutput(loss, {"pred_cosine": agreement})

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """EMA of the target (encoder and projector) with this step's rate (Sec. 3.2); a
        skipped step (``ctx.step_ok`` False) leaves it as it was."""
        c = self.config
        m = momentum_at(ctx.step, ctx.total_steps, c.momentum, c.momentum_schedule)
        ema_update_(self.target_backbone, self.backbone, m, apply=ctx.step_ok)
        ema_update_(self.target_projector, self.projector, m, apply=ctx.step_ok)
