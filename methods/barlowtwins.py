"""Barlow Twins (Zbontar et al., ICML 2021): make the cross-correlation of two views' embeddings
the identity.

Algorithm (Sec. 2, Algorithm 1): encode two distorted views of every image, project each with a
wide MLP (the projector), standardise every embedding dimension over the batch (zero mean, unit
variance), and form the D x D cross-correlation matrix ``C = z_a^T z_b / N``. The loss pulls the
diagonal to 1 (invariance) and the off-diagonal to 0 (redundancy reduction, weighted by lambda):
``L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` (Eq. 1-2).

The batch is the global one (docs/design.md, "Scale"): the embeddings of every rank are gathered
(with gradients flowing back to this rank's share) before standardisation, so every rank
computes the loss of the whole batch and two processes compute what one computes. The official
code (facebookresearch/barlowtwins ``main.py``) reaches the same quantity another way: a
SyncBatchNorm standardises over all ranks, each rank multiplies its own share and the D x D
matrix is summed over ranks. Gathering moves 2 N D numbers instead of D^2 (fewer for the
paper's N = 2048, D = 8192) at the price of every rank computing the whole product.

Where we follow the official code rather than the paper's text, or differ from both:

- Standardisation is batch norm's (biased variance, eps 1e-5), as the official ``nn.BatchNorm1d
  (affine=False)``; the paper writes a plain mean / standard deviation.
- The loss is not rescaled by default. The first official release multiplied it by
  ``--scale-loss 0.024``; the current ``main.py`` dropped that and gives biases and batch-norm
  parameters their own learning rate (0.0048 against 0.2). Our optimisers have one rate for
  every group, so :attr:`BarlowTwinsConfig.loss_scale` brings the first release's factor back
  for the ImageNet recipe (see ``recipes/barlowtwins/imagenet-r50.yaml``).
- The projector's last linear layer has no bias, as the official one (standardisation would
  cancel it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import Views, ViewSpec, asymmetric_pair, require_two_views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules.distributed import gather_with_grad
from ssl_zoo.modules.heads import mlp_head


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------
def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Every column of ``z`` (N, D) at zero mean and unit variance over the N rows, batch norm's
    way (biased variance plus ``eps`` under the square root), as the official code's
    ``BatchNorm1d(affine=False)`` in training mode."""
    mean = z.mean(dim=0, keepdim=True)
    var = (z - mean).pow(2).mean(dim=0, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The D x D matrix ``C_ij = sum_n za_ni zb_nj / N`` of the standardised embeddings (Eq. 2)."""
    return standardise(z_a, eps).t() @ standardise(z_b, eps) / z_a.shape[0]


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float = 0.0051,
                      gather_distributed: bool = False, eps: float = 1e-5
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Barlow Twins' loss (Eq. 1) of the projections ``z_a``, ``z_b`` (n, D) of two views.

    Returns ``(loss, invariance, redundancy)`` with ``invariance = sum_i (1 - C_ii)^2``,
    ``redundancy = sum_{i != j} C_ij^2`` and ``loss = invariance + lambda_offdiag *
    redundancy``. With ``gather_distributed`` ``C`` is over the global batch (every rank's rows,
    gradients reaching every rank's embeddings), so each rank returns the loss one process
    would compute on the whole batch. Computed in float32 (float64 for float64 inputs)
    whatever the autocast dtype.
    """
    with torch.autocast(z_a.device.type, enabled=False):
        dtype = torch.promote_types(z_a.dtype, torch.float32)  # float64 stays float64
        a, b = z_a.to(dtype), z_b.to(dtype)
        if gather_distributed:
            a, b = gather_with_grad(a), gather_with_grad(b)
        c = cross_correlation(a, b, eps)
        diag = c.diagonal()
        invariance = (1 - diag).pow(2).sum()
        redundancy = c.pow(2).sum() - diag.pow(2).sum()
        return invariance + lambda_offdiag * redundancy, invariance, redundancy


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class BarlowTwinsConfig(MethodConfig):
    """Barlow Twins hyper-parameters; defaults suit 32-px images, a small backbone and batches
    of 128-512 (the paper's ImageNet projector is 3 x 8192: ``recipes/barlowtwins``)."""

    lambda_offdiag: float = 0.0051
    """Weight of the redundancy-reduction (off-diagonal) term, lambda (Sec. 2, App. A: 0.0051)."""
    proj_hidden_dim: int = 1024
    """Width of the projector's hidden layers (paper: 8192)."""
    proj_dim: int = 1024
    """Output size of the projector, D: the cross-correlation is D x D (paper: 8192)."""
    proj_layers: int = 3
    """Linear layers of the projector: (linear, BN, ReLU) x (layers - 1), then linear (3)."""
    loss_scale: float = 1.0
    """Factor on the loss (1: the current official code). The first official release used
    0.024 with one learning rate for all parameters, which slows only the parameters LARS
    does not adapt (biases, batch norm); Adam is insensitive to it."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        if not self.lambda_offdiag >= 0:
            raise ConfigError(f"method.lambda_offdiag must be >= 0, got {self.lambda_offdiag} "
                              "(Barlow Twins uses 0.0051)")
        if self.proj_dim < 1 or self.proj_hidden_dim < 1 or self.proj_layers < 1:
            raise ConfigError("method.proj_dim, method.proj_hidden_dim and method.proj_layers "
                              "must be >= 1")
        if not self.loss_scale > 0:
            raise ConfigError(f"method.loss_scale must be > 0, got {self.loss_scale}")
        if batch_size < 2:
            raise ConfigError(f"Barlow Twins standardises every dimension over the batch and "
                              f"needs at least 2 images per global batch, got {batch_size}; use "
                              "train.batch_size >= 2 (128-2048 works well)")


class BarlowTwins(Method):
    """Redundancy reduction: the two views' cross-correlation pulled to the identity."""

    name = "barlowtwins"
    description = ("Barlow Twins: cross-correlation of two views' embeddings -> identity "
                   "(Zbontar et al. 2021)")
    Config = BarlowTwinsConfig
    config: BarlowTwinsConfig

    def __init__(self, backbone: nn.Module, feature_dim: int,
                 config: BarlowTwinsConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.head = mlp_head(feature_dim, c.proj_hidden_dim, c.proj_dim, num_layers=c.proj_layers)
        # the official projector's last linear layer has no bias (standardisation cancels it)
        self.head[-1] = nn.Linear(self.head[-1].in_features, c.proj_dim, bias=False)

    @classmethod
    def default_views(cls, config: BarlowTwinsConfig, image_size: int) -> ViewSpec:
        """BYOL's two asymmetric views (Barlow Twins App. A; see
        :func:`~ssl_zoo.data.views.asymmetric_pair`) with the official code's uncapped PIL
        blur. The two views share one backbone pass (batch statistics over both; the
        official code runs the backbone once per view)."""
        return asymmetric_pair(image_size, blur_kernel_frac=0.0)

    @classmethod
    def check_views(cls, config: BarlowTwinsConfig, spec: ViewSpec) -> None:
        """Exactly two crops of one size: the two views."""
        require_two_views(spec, "Barlow Twins")

    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        feats = self.encode_views(views)
        if len(feats) != 2:
            raise ConfigError(f"Barlow Twins needs exactly 2 crops per image, got {len(feats)}")
        z_a, z_b = self.head(feats[0]), self.head(feats[1])
        loss, invariance, redundancy = barlow_twins_loss(
            z_a, z_b, self.config.lambda_offdiag, gather_distributed=True)
        with torch.no_grad():
            agreement = F.cosine_similarity(z_a.float(), z_b.float(), dim=1).mean()
        return StepOutput(loss * self.config.loss_scale,
                          {"invariance": invariance.detach(), "redundancy": redundancy.detach(),
                           "pos_cosine": agreement})
