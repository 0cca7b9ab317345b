"""MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved baselines with momentum contrastive learning").

Algorithm (MoCo, He et al. CVPR 2020, Algorithm 1, with v2's MLP head and augmentations): a
query encoder (backbone + MLP head) and a momentum key encoder (its exponential moving average);
the query of one crop is contrasted by InfoNCE against the key of the other crop of the same
image (positive) and a queue of keys from earlier batches (negatives); after each step the
batch's keys enter the queue and the key encoder moves towards the query encoder.

Batch norm. A key encoder with ordinary batch norm lets query and positive key "communicate"
through the statistics of the shared batch, and the network can cheat the pretext task (MoCo
Sec. 3.3). We use MoCo's *shuffling BN*, extended so a single process is covered too: the
global key batch is randomly permuted and cut into ``shuffle_bn_groups`` groups, and the key
encoder normalises each group separately; with several processes each rank computes its share of
the groups (one group per rank is exactly the reference's per-GPU shuffle). In one process,
permuting alone would change nothing (batch norm sees the whole batch), so the group split is
what makes the keys' statistics differ from the queries'. We prefer this to SyncBN: global
statistics are the same for queries and keys, which does not remove the shared-batch signal, and
a one-process run would have no protection at all. (``train.sync_bn`` still converts every batch
norm; groups then hold one group per rank at a time.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import Views, ViewSpec, two_crops
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules.distributed import gather_nograd, get_rank, get_world_size
from ssl_zoo.modules.heads import mlp_head
from ssl_zoo.modules.momentum import ema_update_, momentum_at, momentum_copy, momentum_problem
from ssl_zoo.modules.queue import FeatureQueue


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def info_nce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
                    ) -> torch.Tensor:
    """MoCo logits (Algorithm 1): column 0 is ``q_i . k_i``, then ``q_i . queue_j``, all / T.

    ``q``, ``k``: (n, d), normalised here; ``queue``: (K, d) unit vectors. Computed in float32.
    """
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue.float().t()
        return torch.cat([positive, negative], dim=1) / temperature


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
             ) -> torch.Tensor:
    """InfoNCE of MoCo (Eq. 1): mean over queries of ``-log softmax`` of the positive key."""
    logits = info_nce_logits(q, k, queue, temperature)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=q.device))


@torch.no_grad()
def shuffled_bn_keys(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of ``x`` computed with shuffling BN (MoCo Sec. 3.3), across ranks and in-process.

    The images of all ranks (N = ranks x n) are permuted with rank 0's random permutation and cut
    into ``groups`` groups (rounded to a whole number per rank, at least one); each rank encodes
    its own groups one forward each, and the keys are put back into image order. Returns this
    rank's keys (n, d) in input order and every rank's keys (N, d) in rank order (for the queue).
    """
    world, rank, n = get_world_size(), get_rank(), x.shape[0]
    images = gather_nograd(x)
    total = images.shape[0]
    perm = gather_nograd(torch.randperm(total, device=x.device))[:total]  # rank 0's permutation
    mine = images[perm[rank * n:(rank + 1) * n]]
    per_rank = max(1, round(groups / world))
    keys = torch.cat([encoder(part) for part in mine.tensor_split(per_rank)])
    shuffled = gather_nograd(keys)  # row j is the key of image perm[j]
    ordered = torch.empty_like(shuffled)
    ordered[perm] = shuffled
    return ordered[rank * n:(rank + 1) * n], ordered


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class MoCoConfig(MethodConfig):
    """MoCo v2 hyper-parameters; defaults suit a few thousand CIFAR-size images."""

    temperature: float = 0.2
    """InfoNCE temperature (MoCo v2: 0.2)."""
    queue_length: int = 1024
    """Keys kept as negatives, fewer than the training images (MoCo: 65,536 on ImageNet; 4,096
    suits CIFAR-10). Each step adds the global batch's keys (twice that when symmetric)."""
    momentum: float = 0.99
    """Key-encoder EMA momentum (0.99 for short runs on small data; MoCo uses 0.999)."""
    momentum_schedule: str = "constant"
    """constant, or cosine: raise the momentum from ``momentum`` to 1 over training (BYOL)."""
    proj_hidden_dim: int = 0
    """Hidden width of the projection MLP (0: the backbone's feature size, as in MoCo v2)."""
    proj_dim: int = 128
    """Output size of the projection MLP (MoCo v2: 128)."""
    head_batch_norm: bool = False
    """Batch norm in the projection MLP (MoCo v2's head has none)."""
    symmetric: bool = False
    """Also use the second crop as query against the first crop's key; loss is the mean."""
    shuffle_bn_groups: int = 2
    """Groups of the shuffled global key batch that batch norm normalises separately (1: none)."""

    def keys_per_step(self, batch_size: int) -> int:
        return batch_size * (2 if self.symmetric else 1)

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature} "
                              "(MoCo v2 uses 0.2)")
        problem = momentum_problem(self.momentum, self.momentum_schedule,
                                   "0.99 for short runs, 0.999 for long ones")
        if problem:
            raise ConfigError(f"method.{problem}")
        if self.proj_dim < 1 or self.proj_hidden_dim < 0:
            raise ConfigError("method.proj_dim must be >= 1 and method.proj_hidden_dim >= 0")
        if self.shuffle_bn_groups < 1:
            raise ConfigError("method.shuffle_bn_groups must be >= 1 (1: no shuffling BN)")
        if batch_size < 2 * self.shuffle_bn_groups:
            raise ConfigError(
                f"method.shuffle_bn_groups={self.shuffle_bn_groups} leaves fewer than 2 images "
                f"per batch-norm group in a global batch of {batch_size}; use at most "
                f"{max(1, batch_size // 2)} groups or a larger batch")
        # Any length works: the ring buffer wraps around exactly, so every key stays for
        # queue_length keys (the reference asks for a multiple of the batch only to slice simply).
        if self.queue_length < 1:
            raise ConfigError(f"method.queue_length must be >= 1, got {self.queue_length}")
        if 0 < dataset_size <= self.queue_length:  # 0: not known yet (a recipe)
            step = self.keys_per_step(batch_size)
            fit = (dataset_size - 1) // step * step
            hint = f"e.g. {fit}" if fit >= step else f"at most {dataset_size - 1}"
            raise ConfigError(
                f"method.queue_length={self.queue_length} is not smaller than the dataset "
                f"({dataset_size} images): the queue would hold older keys of the query's own "
                f"image as negatives; use a shorter queue ({hint})")


class MoCo(Method):
    """Momentum contrast with a queue of negatives, v2 recipe (Chen et al. 2020)."""

    name = "moco"
    description = "MoCo v2: InfoNCE against a momentum encoder's queue of keys (Chen et al. 2020)"
    Config = MoCoConfig
    config: MoCoConfig

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MoCoConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.head = mlp_head(feature_dim, c.proj_hidden_dim or feature_dim, c.proj_dim,
                             num_layers=2, batch_norm=c.head_batch_norm)
        self.key_backbone = momentum_copy(self.backbone)
        self.key_head = momentum_copy(self.head)
        self.queue = FeatureQueue(c.queue_length, c.proj_dim)
        self._pending_keys: torch.Tensor | None = None

    @classmethod
    def default_views(cls, config: MoCoConfig, image_size: int) -> ViewSpec:
        """Two crops as MoCo v2 (Chen et al. 2020b): area (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1)
        with p=0.8, grayscale 0.2, blur p=0.5 sigma (0.1, 2) at >= 96 px, its kernel not capped
        at 10% of the crop (the official code's PIL blur, radius = sigma, has no cap)."""
        return two_crops(image_size, (0.2, 1.0), 0.5, blur_p=0.0 if image_size < 96 else 0.5,
                         blur_kernel_frac=0.0)

    @classmethod
    def check_views(cls, config: MoCoConfig, spec: ViewSpec) -> None:
        """MoCo trains on exactly two crops per image (query and key)."""
        if spec.num_crops != 2:
            raise ConfigError(f"{cls.name} trains on exactly 2 crops per image, the view spec "
                              f"has {spec.num_crops}; use one group of count 2")

    # --- encoders ---------------------------------------------------------------------------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised query embeddings of a batch of crops."""
        return F.normalize(self.head(self.backbone(x)), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised key embeddings (momentum encoder), without shuffling."""
        return F.normalize(self.key_head(self.key_backbone(x)), dim=1)

    def _keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return shuffled_bn_keys(self.key, x, self.config.shuffle_bn_groups)

    # --- the step ---------------------------------------------------------------------------
    def instance_step(self, views: Views) -> tuple[StepOutput, list[torch.Tensor]]:
        """MoCo's InfoNCE step (loss before the queue update, then enqueue the batch's keys).

        Returns the step output and the normalised queries (one per query crop), so methods
        built on MoCo (PCL) can add their own terms.
        """
        if len(views) != 2:
            raise ConfigError(f"{self.name} trains on exactly 2 crops per image, got "
                              f"{len(views)}; use a view spec with one group of count 2")
        c = self.config
        query_crops = (0, 1) if c.symmetric else (0,)
        queries = [self.query(views[i]) for i in query_crops]
        keys_local, keys_all = zip(*(self._keys(views[1 - i]) for i in query_crops))
        negatives = self.queue()
        logits = [info_nce_logits(q, k, negatives, c.temperature)
                  for q, k in zip(queries, keys_local)]
        target = torch.zeros(len(logits[0]), dtype=torch.long, device=logits[0].device)
        loss = torch.stack([F.cross_entropy(lg, target) for lg in logits]).mean()
        # the batch's keys (already gathered, rank order) enter the queue after the step
        self._pending_keys = torch.cat(keys_all) if self.training else None
        with torch.no_grad():
            top1 = torch.stack([(lg.argmax(1) == 0).float().mean() for lg in logits]).mean()
        return StepOutput(loss, {"instance_top1": top1}), queries

    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        return self.instance_step(views)[0]

    # --- hooks ------------------------------------------------------------------------------
    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """EMA update of the key encoder (MoCo Eq. 2) with this step's momentum, then the
        step's keys enter the queue; a skipped step (``ctx.step_ok`` False) changes neither."""
        c = self.config
        m = momentum_at(ctx.step, ctx.total_steps, c.momentum, c.momentum_schedule)
        ema_update_(self.key_backbone, self.backbone, m, apply=ctx.step_ok)
        ema_update_(self.key_head, self.head, m, apply=ctx.step_ok)
        if self._pending_keys is not None:
            self.queue.enqueue(self._pending_keys, gather=False, valid=ctx.step_ok)
            self._pending_keys = None
