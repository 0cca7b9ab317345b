"""VICReg (Bardes, Ponce and LeCun, ICLR 2022): variance, invariance and covariance regularisation
of two views' embeddings.

Algorithm (Sec. 3, Algorithm 1): encode two distorted views of every image, map each with a wide
MLP (the expander) to embeddings ``z, z'`` (N, D), and minimise

``l = lambda s(z, z') + mu [v(z) + v(z')] / 2 + nu [c(z) + c(z')]`` (Eq. 6), with

- invariance ``s``: the squared distance between the two embeddings of an image (Eq. 5), as a
  mean over images and dimensions (the official code),
- variance ``v(z) = mean_j max(0, gamma - sqrt(Var(z_j) + eps))``, a hinge on the standard
  deviation of every dimension over the batch (Eq. 1), gamma = 1, eps = 1e-4,
- covariance ``c(z) = sum_{i != j} C(z)_ij^2 / D`` with ``C(z)`` the batch covariance matrix
  (Eq. 3-4),

lambda = mu = 25, nu = 1 (Sec. 4.1). The paper writes the variance term once per branch; the
official code (facebookresearch/vicreg ``main_vicreg.py``) averages the two, which is the
``/ 2`` above, and so do we.

The batch is the global one (docs/design.md, "Scale"): the embeddings of every rank are gathered
with gradients flowing back to this rank's share, as the official ``FullGatherLayer``, before
the variance and covariance terms. The official code takes the invariance term on each rank's
own share (its average over ranks is the global one); we take it on the gathered batch too, so
every rank's loss is the loss one process computes on the whole batch.
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
def invariance_term(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """``s(z, z')``: mean over the N x D entries of ``(z - z')^2``. The paper's Eq. 5 sums the
    squared distance over the D dimensions; the official code's ``F.mse_loss`` averages over
    them too (so the weight 25 is calibrated for this one), and so do we."""
    return (z_a - z_b).pow(2).mean()


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """``v(z)``: mean over dimensions of ``max(0, gamma - sqrt(Var(z_j) + eps))``, the variance
    unbiased (N - 1) over the batch (Eq. 1-2)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """``c(z)``: sum of the squared off-diagonal entries of the batch covariance matrix
    ``C = (z - mean)^T (z - mean) / (N - 1)``, divided by the dimension D (Eq. 3-4)."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.t() @ centred / (n - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, invariance_weight: float = 25.0,
                variance_weight: float = 25.0, covariance_weight: float = 1.0,
                gamma: float = 1.0, eps: float = 1e-4, gather_distributed: bool = False
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg's loss (Eq. 6) of the embeddings ``z_a``, ``z_b`` (n, D) of two views.

    Returns ``(loss, terms)`` with ``terms`` the unweighted ``invariance``, ``variance`` (the
    two branches' average) and ``covariance`` (the two branches' sum). With
    ``gather_distributed`` all three are over the global batch (every rank's rows, gradients
    reaching every rank's embeddings), so each rank returns the loss one process computes on
    the whole batch. Computed in float32 (float64 for float64 inputs) whatever the
    autocast dtype.
    """
    with torch.autocast(z_a.device.type, enabled=False):
        dtype = torch.promote_types(z_a.dtype, torch.float32)  # float64 stays float64
        a, b = z_a.to(dtype), z_b.to(dtype)
        if gather_distributed:
            a, b = gather_with_grad(a), gather_with_grad(b)
        terms = {
            "invariance": invariance_term(a, b),
            "variance": (variance_term(a, gamma, eps) + variance_term(b, gamma, eps)) / 2,
            "covariance": covariance_term(a) + covariance_term(b),
        }
        loss = (invariance_weight * terms["invariance"] + variance_weight * terms["variance"]
                + covariance_weight * terms["covariance"])
        return loss, terms


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class VICRegConfig(MethodConfig):
    """VICReg hyper-parameters; defaults suit 32-px images, a small backbone and batches of
    128-512 (the paper's ImageNet expander is 3 x 8192: ``recipes/vicreg``)."""

    invariance_weight: float = 25.0
    """lambda, the weight of the invariance (mean squared distance) term (Sec. 4.1: 25)."""
    variance_weight: float = 25.0
    """mu, the weight of the variance (standard deviation hinge) term (Sec. 4.1: 25)."""
    covariance_weight: float = 1.0
    """nu, the weight of the covariance (off-diagonal) term (Sec. 4.1: 1)."""
    std_target: float = 1.0
    """gamma, the standard deviation every dimension is pushed up to (Eq. 1: 1)."""
    variance_eps: float = 1e-4
    """eps under the square root of the variance (Eq. 1: 1e-4)."""
    expander_hidden_dim: int = 1024
    """Width of the expander's hidden layers (paper: 8192)."""
    expander_dim: int = 1024
    """Output size of the expander, D: the embeddings the loss sees (paper: 8192)."""
    expander_layers: int = 3
    """Linear layers of the expander: (linear, BN, ReLU) x (layers - 1), then linear (3)."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        weights = (self.invariance_weight, self.variance_weight, self.covariance_weight)
        if min(weights) < 0:
            raise ConfigError("method.invariance_weight, method.variance_weight and "
                              f"method.covariance_weight must be >= 0, got {weights} "
                              "(VICReg uses 25, 25, 1)")
        if not self.std_target > 0 or not self.variance_eps >= 0:
            raise ConfigError("method.std_target must be > 0 and method.variance_eps >= 0")
        if self.expander_dim < 1 or self.expander_hidden_dim < 1 or self.expander_layers < 1:
            raise ConfigError("method.expander_dim, method.expander_hidden_dim and "
                              "method.expander_layers must be >= 1")
        if batch_size < 2:
            raise ConfigError(f"VICReg's variance and covariance are over the batch and need "
                              f"at least 2 images per global batch, got {batch_size}; use "
                              "train.batch_size >= 2 (128-2048 works well)")


class VICReg(Method):
    """Variance-invariance-covariance regularisation of two views' embeddings."""

    name = "vicreg"
    description = ("VICReg: invariance, variance and covariance terms on two views "
                   "(Bardes et al. 2022)")
    Config = VICRegConfig
    config: VICRegConfig

    def __init__(self, backbone: nn.Module, feature_dim: int,
                 config: VICRegConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.head = mlp_head(feature_dim, c.expander_hidden_dim, c.expander_dim,
                             num_layers=c.expander_layers)
        # the official expander's last linear layer has no bias
        self.head[-1] = nn.Linear(self.head[-1].in_features, c.expander_dim, bias=False)

    @classmethod
    def default_views(cls, config: VICRegConfig, image_size: int) -> ViewSpec:
        """BYOL's two asymmetric views (VICReg's appendix; see
        :func:`~ssl_zoo.data.views.asymmetric_pair`) with the official code's uncapped PIL
        blur. The two views share one backbone pass (batch statistics over both; the
        official code runs the backbone once per view)."""
        return asymmetric_pair(image_size, blur_kernel_frac=0.0)

    @classmethod
    def check_views(cls, config: VICRegConfig, spec: ViewSpec) -> None:
        """Exactly two crops of one size: the two views."""
        require_two_views(spec, "VICReg")

    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        feats = self.encode_views(views)
        if len(feats) != 2:
            raise ConfigError(f"VICReg needs exactly 2 crops per image, got {len(feats)}")
        z_a, z_b = self.head(feats[0]), self.head(feats[1])
        c = self.config
        loss, terms = vicreg_loss(z_a, z_b, c.invariance_weight, c.variance_weight,
                                  c.covariance_weight, c.std_target, c.variance_eps,
                                  gather_distributed=True)
        with torch.no_grad():
            std = z_a.float().std(dim=0).mean()
        metrics = {k: v.detach() for k, v in terms.items()}
        metrics["embedding_std"] = std
        return StepOutput(loss, metrics)
