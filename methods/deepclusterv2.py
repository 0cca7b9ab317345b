"""DeepCluster-v2 (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", Sec. 4.2 and App. B: DeepCluster rebuilt with SwAV's improvements).

Algorithm (the official ``main_deepclusterv2.py`` of facebookresearch/swav): every crop goes
through the backbone and an MLP head to a unit embedding z. A memory keeps, for every training
image, the embeddings of its assigned crops (``crops_for_assign``: the two global crops) from the
last time it was trained on. At every epoch start, spherical k-means clusters the memory once per
head (``num_prototypes``: e.g. 3 heads of 3000), head h on the memory of assigned crop
h mod (number of assigned crops); each image's cluster is its target for the epoch, and the unit
centroids become the head's prototypes. During the epoch every crop, global and local, predicts
its image's cluster: softmax(z^T c / T) against the fixed centroids, cross-entropy, averaged over
crops and heads.

Where we differ from the official code, and why:

- The memory is indexed by image, not by position in the rank's epoch: every rank keeps the whole
  dataset's memory (the step's embeddings are gathered), so a checkpoint by rank 0 resumes it
  exactly (the official code saves one file per rank). An image not drawn in the last epoch
  keeps its older embedding and still has a target; the official code leaves it out (-100).
  Memory cost: crops_for_assign x images x feat_dim floats on every rank (ImageNet: 1.3 GB).
- Before the first epoch the memory is filled by one pass of the deterministic evaluation views
  (the same embedding in every bank, network in eval mode); the official ``init_memory`` makes
  one no-grad pass of the training loader's augmented assigned crops, in train mode.
- k-means is faiss's spherical k-means (:func:`ssl_zoo.evaluation.faiss_utils.kmeans`; k random
  points to start, ``kmeans_iters`` Lloyd iterations as the official 10), run on rank 0 and
  broadcast. Faiss re-seeds an empty cluster by splitting a large one; the official code keeps
  its previous centroid.
- The prototypes are never trained: the official scripts freeze them for 300,000 iterations
  (``--freeze_prototypes_niters``), more than the runs have, so their gradient is always cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import Views, ViewSpec, crop_list_problem, multi_crop
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation.faiss_utils import kmeans
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules.distributed import broadcast_, get_rank
from ssl_zoo.modules.heads import mlp_head
from ssl_zoo.modules.memory import SampleMemory, dataset_embeddings
from ssl_zoo.modules.prototypes import Prototypes
from ssl_zoo.modules.state import host_counters, sized_by_checkpoint


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def cluster_prediction_loss(scores: Sequence[torch.Tensor], targets: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """DeepCluster-v2's loss: for each head h, the mean over all crops of every image of
    ``-log softmax(scores[h] / T)[target]``, then the mean over heads.

    ``scores[h]`` (V B, K_h): cosines of the V crops of B images (crop-major: crop 0 of every
    image, then crop 1, ...), ``targets`` (H, B): each image's cluster in every head.
    """
    if len(scores) != targets.shape[0]:
        raise ValueError(f"{len(scores)} score sets for {targets.shape[0]} heads")
    b = targets.shape[1]
    terms = []
    with torch.autocast(targets.device.type, enabled=False):
        for s, t in zip(scores, targets):
            if s.shape[0] % b:
                raise ValueError(f"{s.shape[0]} score rows are not a whole number of crops "
                                 f"of {b} images")
            terms.append(F.cross_entropy(s.float() / temperature, t.repeat(s.shape[0] // b)))
    return torch.stack(terms).mean()


def spherical_kmeans(features: torch.Tensor, k: int, niter: int, seed: int, redo: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit centroids (k, d) and assignments (N,) of spherical k-means of unit ``features``
    (faiss, on the GPU when it can: :func:`ssl_zoo.evaluation.faiss_utils.kmeans`): points go
    to the centroid of largest cosine, centroids are re-normalised means (DeepCluster-v2's
    ``cluster_memory``). Of ``redo`` runs from k random points, the one of largest summed
    cosine is kept (the official code: one run)."""
    centroids, assignments, _ = kmeans(features, k, niter=niter, seed=seed, spherical=True,
                                       nredo=redo)
    return (F.normalize(centroids.float(), dim=1).to(features.device),
            assignments.long().to(features.device))


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class DeepClusterV2Config(MethodConfig):
    """DeepCluster-v2 hyper-parameters; defaults suit the 2,000-image demo set."""

    num_prototypes: tuple[int, ...] = (30, 30, 30)
    """Clusters of each k-means head (official: 3000, 3000, 3000 for 1.28M images); each
    smaller than the dataset."""
    feat_dim: int = 128
    """Size of the unit embedding (official: 128)."""
    hidden_dim: int = 0
    """Hidden width of the MLP head; 0: the backbone's feature size (official: 2048)."""
    temperature: float = 0.1
    """Softmax temperature of the cluster prediction (official: 0.1)."""
    crops_for_assign: tuple[int, ...] = (0, 1)
    """Crops whose embeddings the memory keeps; head h clusters the memory of crop
    h mod len(crops_for_assign) (official: 0, 1)."""
    kmeans_iters: int = 10
    """Lloyd iterations of each k-means (official: 10)."""
    kmeans_redo: int = 1
    """Independent k-means runs per head, the best kept (official: 1)."""
    kmeans_seed: int = 0
    """Seed of head 0's k-means at epoch 0; head h at epoch e uses seed + 1000 e + h."""

    def heads_problem(self, dataset_size: int) -> str | None:
        if not self.num_prototypes:
            return "num_prototypes needs at least one head, e.g. [30, 30, 30]"
        for k in self.num_prototypes:
            if k < 2 or 0 < dataset_size <= k:  # 0: the size is not known yet
                return (f"num_prototypes: {k} clusters is impossible for {dataset_size} "
                        f"images; use counts between 2 and {dataset_size - 1} (official: 3000 "
                        f"for 1.28M images; 30-100 work on thousands)")
        return None

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"method.{msg}")

        problem = self.heads_problem(dataset_size)
        need(problem is None, str(problem))
        need(self.feat_dim >= 1, f"feat_dim must be >= 1, got {self.feat_dim}")
        need(self.hidden_dim >= 0, f"hidden_dim must be >= 0 (0: backbone size), got "
                                   f"{self.hidden_dim}")
        need(self.temperature > 0, f"temperature must be > 0 (official: 0.1), got "
                                   f"{self.temperature}")
        problem = crop_list_problem("crops_for_assign", self.crops_for_assign)
        need(problem is None, str(problem))
        need(self.kmeans_iters >= 1, f"kmeans_iters must be >= 1 (official: 10), got "
                                     f"{self.kmeans_iters}")
        need(self.kmeans_redo >= 1, f"kmeans_redo must be >= 1 (official: 1), got "
                                    f"{self.kmeans_redo}")


class DeepClusterV2(Method):
    """DeepCluster-v2: predict each image's k-means cluster of the last epoch's embeddings."""

    name = "deepclusterv2"
    description = ("DeepCluster-v2: predict k-means clusters of last epoch's embeddings "
                   "(Caron et al. 2020)")
    Config = DeepClusterV2Config
    config: DeepClusterV2Config
    learn_prototypes = False  # the centroids are the prototypes (SeLa-v2 learns them)

    assignments: torch.Tensor
    assigned_epoch: int  # epoch of the last assignment; -1: none yet

    def __init__(self, backbone: nn.Module, feature_dim: int,
                 config: DeepClusterV2Config | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.projection = mlp_head(feature_dim, c.hidden_dim or feature_dim, c.feat_dim)
        self.prototypes = nn.ModuleList(
            [Prototypes(c.feat_dim, k, learnable=self.learn_prototypes)
             for k in c.num_prototypes])
        self.memory = SampleMemory(len(c.crops_for_assign), c.feat_dim)
        # (heads, dataset size): allocated in on_train_start / resized by load_state_dict
        self.register_buffer("assignments",
                             torch.zeros(len(c.num_prototypes), 0, dtype=torch.long))
        sized_by_checkpoint(self, "assignments")
        host_counters(self, assigned_epoch=-1)
        self._pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    @classmethod
    def default_views(cls, config: DeepClusterV2Config, image_size: int) -> ViewSpec:
        """Multi-crop as SwAV's (Sec. 3.2; the official 800-epoch script: 2 x 224 at scale
        (0.14, 1) + 6 x 96 at (0.05, 0.14), colour strength 1, blur p=0.5). Below 192 px:
        2 x image size + 4 x half of it, no blur, colour strength 0.5 at 64 px and below."""
        large = image_size >= 192
        return multi_crop(
            global_size=image_size, local_size=96 if large else max(1, image_size // 2),
            n_local=6 if large else 4, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14),
            strength=1.0 if image_size > 64 else 0.5, blur_p=0.5 if image_size >= 96 else 0.0,
            blur_kernel_frac=0.0)

    @classmethod
    def check_views(cls, config: DeepClusterV2Config, spec: ViewSpec) -> None:
        problem = crop_list_problem("crops_for_assign", config.crops_for_assign,
                                    spec.num_crops)
        if problem:
            raise ConfigError(f"method.{problem}")

    # --- pieces ---------------------------------------------------------------------------------
    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (float32) of backbone features through the projection head."""
        z = self.projection(features)
        with torch.autocast(z.device.type, enabled=False):
            return F.normalize(z.float(), dim=1)

    @property
    def assigned(self) -> bool:
        return self.assigned_epoch >= 0

    def _allocate(self, dataset_size: int) -> None:
        self.memory.allocate(dataset_size)
        if self.assignments.shape[1] == dataset_size:
            return
        if self.assigned:
            raise ConfigError(
                f"{self.name}: the checkpoint's assignments cover {self.assignments.shape[1]} "
                f"images but the training set has {dataset_size}; resume with the same dataset")
        self.assignments = torch.zeros(len(self.config.num_prototypes), dataset_size,
                                       dtype=torch.long, device=self.assignments.device)

    @torch.no_grad()
    def fill_memory(self, ctx: TrainContext) -> None:
        """Every bank takes the embeddings of the evaluation views of all images (before the
        first epoch: nothing has been trained on yet)."""
        was_training = self.training
        self.eval()
        try:
            feats = dataset_embeddings(ctx.eval_batches(), lambda x: self.embed(self.backbone(x)),
                                       ctx.dataset_size, self.config.feat_dim,
                                       self.assignments.device, self.name)
        finally:
            self.train(was_training)
        self.memory.fill(F.normalize(feats, dim=1))

    @torch.no_grad()
    def head_assignments(self, head: int, features: torch.Tensor, epoch: int) -> torch.Tensor:
        """Head ``head``'s cluster of every image from the memory ``features`` (N, d): k-means on
        rank 0, its centroids copied into the head's prototypes, both broadcast."""
        c = self.config
        prototypes = self.prototypes[head].weight
        assign = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        if get_rank() == 0:
            cents, assign = spherical_kmeans(features, c.num_prototypes[head], c.kmeans_iters,
                                             c.kmeans_seed + 1000 * epoch + head, c.kmeans_redo)
            prototypes.copy_(cents)
        broadcast_(prototypes.data)
        return broadcast_(assign)

    @torch.no_grad()
    def assign(self, epoch: int) -> None:
        """Every head's assignments of every image from the memory (the epoch-start work)."""
        banks = self.memory.embeddings
        for h in range(len(self.config.num_prototypes)):
            self.assignments[h].copy_(self.head_assignments(h, banks[h % banks.shape[0]], epoch))
        self.assigned_epoch = epoch

    # --- the step -------------------------------------------------------------------------------
    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        """Every crop predicts its image's cluster in every head (``cluster_prediction_loss``);
        the agreement metric only on log steps (``ctx.log_step``; outside a trainer, always)."""
        c = self.config
        problem = crop_list_problem("crops_for_assign", c.crops_for_assign, len(views))
        if problem:  # the trainer checked the view spec; a direct call may pass other views
            raise ConfigError(f"method.{problem}")
        if views.index is None:
            raise RuntimeError(f"{self.name} needs the dataset index of every image "
                               "(views.index)")
        if not self.assigned:
            raise RuntimeError(f"{self.name}: no cluster assignments yet; on_epoch_start "
                               "assigns them (the trainer calls it)")
        index = views.index.to(self.assignments.device)
        z = self.embed(torch.cat(self.encode_views(views)))  # (V B, d), crop-major
        with torch.autocast(z.device.type, enabled=False):
            scores = [p(z) for p in self.prototypes]
        targets = self.assignments[:, index]
        loss = cluster_prediction_loss(scores, targets, c.temperature)
        if self.training:  # enters the memory in after_optimizer_step, if the step is finite
            per_crop = z.detach().chunk(len(views))
            self._pending = (index, [per_crop[crop] for crop in c.crops_for_assign])
        metrics: dict[str, Any] = {"ln_k": math.log(c.num_prototypes[0])}
        if ctx is None or ctx.log_step:
            n_crops = len(views)
            metrics["target_top1"] = torch.stack(
                [(s.detach().argmax(1) == t.repeat(n_crops)).float().mean()
                 for s, t in zip(scores, targets)]).mean()
        return StepOutput(loss, metrics, {"embeddings": z.detach()})

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_assignments(self, images: torch.Tensor) -> torch.Tensor | None:
        """Best-scoring prototype of head 0 (its centroids) for each image."""
        if not self.assigned:
            return None
        z = self.embed(self.backbone(images))
        with torch.autocast(z.device.type, enabled=False):
            return self.prototypes[0](z).argmax(dim=1)

    # --- hooks ------------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        """Rows for every training image (or the checkpoint's, checked against the data)."""
        self._allocate(ctx.dataset_size)

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """Assign every image from the memory of the last epoch (filled first, at the start)."""
        self._allocate(ctx.dataset_size)
        if not self.memory.filled:
            self.fill_memory(ctx)
        self.assign(ctx.epoch)

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """The step's assigned-crop embeddings enter the memory (rows unchanged when
        ``ctx.step_ok`` says the step was skipped)."""
        if self._pending is not None:
            index, rows = self._pending
            self.memory.write(index, rows, valid=ctx.step_ok)
        self._pending = None
