"""SimCLR (Chen et al., ICML 2020): NT-Xent between two views of each image, in-batch negatives.

Algorithm: encode every crop, project with an MLP head, L2-normalise, and for each anchor
embedding make its other view the positive and the global-crop embeddings of every other image in
the (global) batch the negatives (Sec. 2.1, Eq. 1). Negatives are gathered from all ranks with
gradients flowing back to the local embeddings, so two processes compute what one computes on the
whole batch.

Optional multi-crop (SwAV, Caron et al. 2020, App. A.8 applies it to SimCLR): extra small local
crops act only as anchors. Each local crop of image i is pulled towards both global crops of
image i, each pair contrasted against the same negatives as a global anchor of image i (the
2N - 2 global embeddings of the other images); local crops are never negatives.

Where we follow the official code (google-research/simclr) rather than the paper's text, or
differ from both:

- The projection head ends with a batch norm of its output, as the official ``projection_head``
  (the paper writes g(h) = W2 ReLU(W1 h)); ours has no learned scale (the official one has a
  learned scale, no shift); ``proj_output_batch_norm=False`` removes it.
- CIFAR-size views follow the paper's CIFAR recipe (App. B.9: colour strength 0.5, no blur),
  see :meth:`SimCLR.default_views`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.data.views import Views, ViewSpec, two_crops
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules.distributed import gather_with_grad, get_rank
from ssl_zoo.modules.heads import mlp_head


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------
def _pair_terms(logits: torch.Tensor, positive: torch.Tensor, excluded: torch.Tensor
                ) -> torch.Tensor:
    """Per-row ``-log softmax`` at column ``positive`` with column ``excluded`` left out."""
    logits = logits.scatter(1, excluded[:, None], float("-inf"))
    return F.cross_entropy(logits, positive, reduction="none")


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float,
            local_z: Sequence[torch.Tensor] = (), gather_distributed: bool = False
            ) -> torch.Tensor:
    """NT-Xent loss (SimCLR Eq. 1) over the 2N global views, plus optional local-crop anchors.

    ``z_a``, ``z_b``: (n, d) embeddings of the two global crops (normalised here). Every anchor
    (a_i, b_i, and each local crop l_i) is scored by cosine / ``temperature`` against the 2N
    global embeddings; for the pair (anchor of image i, positive p in {a_i, b_i} other than the
    anchor) the term is ``-log exp(s(x,p)) / (exp(s(x,p)) + sum_{m != i} exp(s(x,a_m)) +
    exp(s(x,b_m)))``. The loss is the mean over all pairs: 2N global pairs plus two per local
    crop. With ``gather_distributed`` the global embeddings of every rank form the candidates
    and this rank's anchors are scored against them (gradients reach every rank's embeddings);
    averaging this rank's loss over ranks (DDP) gives one process's loss on the whole batch.
    """
    with torch.autocast(z_a.device.type, enabled=False):
        a = F.normalize(z_a.float(), dim=1)
        b = F.normalize(z_b.float(), dim=1)
        locs = [F.normalize(z.float(), dim=1) for z in local_z]
        n = a.shape[0]
        if gather_distributed:
            all_a, all_b, offset = gather_with_grad(a), gather_with_grad(b), get_rank() * n
        else:
            all_a, all_b, offset = a, b, 0
        total = all_a.shape[0]
        candidates = torch.cat([all_a, all_b]).t() / temperature  # (d, 2N)
        own_a = torch.arange(n, device=a.device) + offset  # column of a_i; b_i is total + that
        own_b = own_a + total
        terms = [
            _pair_terms(a @ candidates, own_b, own_a),
            _pair_terms(b @ candidates, own_a, own_b),
        ]
        for loc in locs:
            logits = loc @ candidates
            terms.append(_pair_terms(logits, own_a, own_b))
            terms.append(_pair_terms(logits, own_b, own_a))
        return torch.cat(terms).mean()


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR hyper-parameters; defaults suit CIFAR-size images and batches of 128-512."""

    temperature: float = 0.5
    """Softmax temperature of NT-Xent (0.5 is SimCLR's best for small batches, App. B.9)."""
    proj_hidden_dim: int = 0
    """Hidden width of the projection MLP (0: the backbone's feature size, as in SimCLR)."""
    proj_dim: int = 128
    """Output size of the projection MLP: the space the loss compares in."""
    proj_layers: int = 2
    """Linear layers in the projection MLP (2 in SimCLR v1, 3 in SimCLR v2)."""
    proj_output_batch_norm: bool = True
    """Batch norm (no affine parameters) on the projection output, as the official code."""
    num_local_crops: int = 0
    """Extra small crops per image used as anchors only (multi-crop, SwAV App. A.8); 0: off."""
    local_crop_size: int = 0
    """Side of the local crops in pixels (0: half the image size)."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature} "
                              "(SimCLR uses 0.1-0.5)")
        if self.proj_dim < 1 or self.proj_hidden_dim < 0 or self.proj_layers < 1:
            raise ConfigError("method.proj_dim and method.proj_layers must be >= 1 and "
                              "method.proj_hidden_dim >= 0 (0: the backbone's width)")
        if self.num_local_crops < 0:
            raise ConfigError("method.num_local_crops must be >= 0")
        if self.local_crop_size < 0 or self.local_crop_size > image_size:
            raise ConfigError(f"method.local_crop_size must be between 1 and the image size "
                              f"{image_size} (0: half of it), got {self.local_crop_size}")
        if batch_size < 2:
            raise ConfigError(f"SimCLR needs at least 2 images per global batch for negatives, "
                              f"got {batch_size}; use train.batch_size >= 2 (128-512 works well)")


class SimCLR(Method):
    """Contrastive learning with NT-Xent and in-batch negatives (Chen et al. 2020)."""

    name = "simclr"
    description = "SimCLR: NT-Xent between two views, negatives from the batch (Chen et al. 2020)"
    Config = SimCLRConfig
    config: SimCLRConfig

    def __init__(self, backbone: torch.nn.Module, feature_dim: int,
                 config: SimCLRConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.head = mlp_head(feature_dim, c.proj_hidden_dim or feature_dim, c.proj_dim,
                             num_layers=c.proj_layers,
                             last_batch_norm=c.proj_output_batch_norm)

    @classmethod
    def default_views(cls, config: SimCLRConfig, image_size: int) -> ViewSpec:
        """Two crops as SimCLR (App. A): area (0.08, 1), colour strength 1, blur p=0.5 with a
        kernel of 10% of the crop at ImageNet size; CIFAR-size images (<= 64 px) as the paper's
        CIFAR recipe (App. B.9): strength 0.5, no blur. Optional local crops with the same
        colour recipe; with them the global scale becomes (0.14, 1) and the local one
        (0.05, 0.14), as SwAV's multi-crop (Sec. 3.2)."""
        small = image_size <= 64
        spec = two_crops(image_size, (0.08, 1.0), 0.5 if small else 1.0,
                         blur_p=0.0 if image_size < 96 else 0.5, blur_kernel_frac=0.1)
        if config.num_local_crops > 0:
            glob = dataclasses.replace(spec.groups[0], scale=(0.14, 1.0))
            size = config.local_crop_size or max(1, image_size // 2)
            local = dataclasses.replace(glob, count=config.num_local_crops, size=size,
                                        scale=(0.05, 0.14), role="local")
            spec.groups = [glob, local]
        return spec

    @classmethod
    def check_views(cls, config: SimCLRConfig, spec: ViewSpec) -> None:
        """Two global crops first (anchors and positives), local crops after them."""
        if spec.num_crops < 2 or spec.groups[0].count < 2:
            raise ConfigError("SimCLR needs 2 global crops first in the view spec (one group of "
                              f"count >= 2), got counts {[g.count for g in spec.groups]}")

    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        if len(views) < 2:
            raise ConfigError(f"SimCLR needs at least 2 crops per image, got {len(views)}")
        feats = self.encode_views(views)
        z = self.head(torch.cat(feats)).chunk(len(feats))
        loss = nt_xent(z[0], z[1], self.config.temperature, local_z=z[2:],
                       gather_distributed=True)
        with torch.no_grad():
            agreement = F.cosine_similarity(z[0].float(), z[1].float(), dim=1).mean()
        return StepOutput(loss, {"pos_cosine": agreement})
