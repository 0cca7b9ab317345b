"""PCL: Prototypical Contrastive Learning (Li, Zhou, Xiong, Hoi; ICLR 2021), v2 recipe.

Algorithm (PCL Algorithm 1, reference code salesforce/PCL): MoCo v2's instance InfoNCE loss, plus,
once ``warmup_epochs`` are done, a ProtoNCE term. At the start of every later epoch the momentum
encoder embeds the whole training set (deterministic evaluation views), k-means clusters these
embeddings several times with different numbers of clusters, and each cluster gets a
concentration phi (Eq. 12) that acts as its own temperature. During the epoch, a query is pulled
towards the prototype (normalised centroid) of its image's cluster and pushed from other
prototypes, per clustering, and the ProtoNCE terms are averaged over clusterings (Eq. 11).

MoCo is reused by subclassing: the query/key encoders, the queue, shuffling BN and the momentum
update are MoCo's; this file adds only the clustering and the ProtoNCE term.

Distributed: every rank embeds its shard of the training set; a sum over ranks puts all features
on every rank in dataset order; rank 0 runs k-means and its result reaches the other ranks by a
sum over ranks in which they contribute zeros (a broadcast), as the reference broadcasts from
rank 0. All ranks then hold the same clustering; sampling of negative prototypes is per rank.

State: centroids, concentrations and each image's assignments are persistent buffers, so a
checkpoint taken mid-epoch resumes with exactly the same clustering. The assignments buffer has
one entry per training image; the constructor does not know the dataset size, so it starts empty,
is allocated in ``on_train_start`` from ``TrainContext.dataset_size``, and ``load_state_dict``
re-sizes it to the checkpoint's shape (the trainer loads checkpoints before ``on_train_start``).
The epoch of the last clustering is a host counter saved beside them
(:mod:`ssl_zoo.modules.state`), so whether ProtoNCE is on is known without reading the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.evaluation.faiss_utils import kmeans
from ssl_zoo.method import StepOutput, TrainContext
from ssl_zoo.modules.distributed import all_reduce_sum, get_rank, is_distributed
from ssl_zoo.modules.memory import dataset_embeddings
from ssl_zoo.modules.state import host_counters, sized_by_checkpoint
from ssl_zoo_methods.moco import MoCo, MoCoConfig


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def cluster_concentration(features: torch.Tensor, centroids: torch.Tensor,
                          assignments: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """Raw concentration of each cluster, PCL Eq. 12: ``phi = sum_z ||v_z - c|| / (Z log(Z + a))``.

    ``v_z`` are the Z embeddings assigned to centroid ``c`` (Euclidean distances to the k-means
    centroid, before it is normalised). Clusters with at most one member get the largest phi of
    the others, as the reference code does (all ones if no cluster has two members).
    """
    k = centroids.shape[0]
    features, centroids = features.double(), centroids.double()
    dist = (features - centroids[assignments]).norm(dim=1)
    count = torch.bincount(assignments, minlength=k).double()
    total = torch.zeros(k, dtype=torch.float64, device=features.device)
    total.index_add_(0, assignments, dist)
    big = count > 1
    phi = torch.ones(k, dtype=torch.float64, device=features.device)
    if big.any():
        phi[big] = total[big] / (count[big] * torch.log(count[big] + alpha))
        phi[~big] = phi[big].max()
    return phi


def scale_concentration(phi: torch.Tensor, temperature: float,
                        clip_percentiles: tuple[float, float] = (10.0, 90.0)) -> torch.Tensor:
    """Concentrations clamped to the given percentiles, then scaled so their mean is
    ``temperature`` (PCL Sec. 3.4 / reference code: clamp at the 10th and 90th percentile).

    Guard (not in the reference): if every phi is 0 (collapsed embeddings) all become
    ``temperature``, and none ends below ``temperature / 100``, so no logit is divided by zero.
    """
    phi = phi.double()
    lo, hi = (torch.quantile(phi, p / 100.0).item() for p in clip_percentiles)
    phi = phi.clamp(lo, hi)
    mean = phi.mean()
    if not mean > 0:
        return torch.full_like(phi, temperature).float()
    return (temperature * phi / mean).clamp_min(temperature / 100.0).float()


def candidate_prototypes(positive: torch.Tensor, num_clusters: int, num_negatives: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_clusters,) bool mask of the prototypes in the ProtoNCE softmax: the batch's positive
    clusters and up to ``num_negatives`` negatives drawn uniformly without replacement from the
    clusters that are no sample's positive (the reference's ``sample(all - positives, r)``); all
    of them when fewer are left.

    Drawn as the ``num_negatives`` smallest of i.i.d. uniform keys, the positives' keys set
    above every other (a uniform random subset of the free clusters), so every shape is fixed
    and nothing is read back from the device.
    """
    keys = torch.rand(num_clusters, device=positive.device, generator=generator)
    keys.index_fill_(0, positive, 2.0)  # taken only when fewer than num_negatives are free
    chosen = torch.topk(keys, min(num_negatives, num_clusters), largest=False).indices
    mask = torch.zeros(num_clusters, dtype=torch.bool, device=positive.device)
    return mask.index_fill_(0, chosen, True).index_fill_(0, positive, True)


def proto_nce_logits(q: torch.Tensor, prototypes: torch.Tensor, concentration: torch.Tensor,
                     positive: torch.Tensor, candidates: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """ProtoNCE logits of one clustering (PCL Eq. 11): ``q . c_j / phi_j`` for every cluster j,
    -inf outside the ``candidates`` mask, and each query's target column (its own cluster).

    Deviation from the reference: it lists a prototype once per sample of the batch assigned to
    it, so a prototype shared by several samples appears several times in each denominator; we
    list it once.
    """
    with torch.autocast(q.device.type, enabled=False):
        logits = (F.normalize(q.float(), dim=1) @ prototypes.float().t())
        logits = logits / concentration.float()
        return logits.masked_fill(~candidates, float("-inf")), positive


def proto_nce(q: torch.Tensor, prototypes: torch.Tensor, concentration: torch.Tensor,
              positive: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """ProtoNCE of one clustering: mean ``-log softmax`` of each query's own prototype."""
    logits, target = proto_nce_logits(q, prototypes, concentration, positive, candidates)
    return F.cross_entropy(logits, target)


def run_kmeans(features: torch.Tensor, k: int, niter: int, seed: int, nredo: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k, d) and assignments (N,) of Euclidean faiss k-means (GPU when available).

    As the reference: plain (not spherical) k-means on the unit-length embeddings; centroids are
    normalised only where they are used as prototypes.
    """
    centroids, assignments, _ = kmeans(features, k, niter=niter, seed=seed, nredo=nredo)
    return centroids.float().to(features.device), assignments.long().to(features.device)


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class PCLConfig(MoCoConfig):
    """PCL v2 hyper-parameters: MoCo v2's plus the clustering; defaults suit 2k-50k images."""

    num_clusters: tuple[int, ...] = (100, 250, 500)
    """Cluster counts of the k-means runs, one ProtoNCE term each (PCL on ImageNet: 25k, 50k,
    100k); each must be smaller than the dataset."""
    warmup_epochs: int = 2
    """Epochs trained with the instance loss only before the first clustering (PCL: 20 of 200)."""
    num_negative_prototypes: int = 1024
    """Prototypes sampled as negatives per clustering (reference: r = 16,000); when fewer
    clusters are left, all of them are used."""
    kmeans_iters: int = 20
    """Lloyd iterations of each k-means run (reference: 20)."""
    kmeans_redo: int = 5
    """Independent k-means runs per clustering, the best (lowest error) kept (reference: 5)."""
    kmeans_seed: int = 0
    """Seed of the first k-means run; run m uses kmeans_seed + m (the reference uses m)."""
    concentration_alpha: float = 10.0
    """Smoothing alpha in phi = sum ||v - c|| / (Z log(Z + alpha)) (PCL Eq. 12: 10)."""
    concentration_clip_percentiles: tuple[float, float] = (10.0, 90.0)
    """Percentiles at which concentrations are clamped before rescaling (reference: 10, 90)."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        super().validate(image_size, batch_size, dataset_size)
        if not self.num_clusters:
            raise ConfigError("method.num_clusters needs at least one cluster count, "
                              "e.g. [100, 250, 500]")
        for k in self.num_clusters:
            if k < 2 or 0 < dataset_size <= k:  # dataset_size 0: not known yet
                raise ConfigError(
                    f"method.num_clusters: {k} clusters is impossible for {dataset_size} images; "
                    f"use counts between 2 and {dataset_size - 1} (e.g. about "
                    f"{max(2, dataset_size // 50)}-{max(2, dataset_size // 10)})")
        if self.warmup_epochs < 0:
            raise ConfigError("method.warmup_epochs must be >= 0")
        if self.num_negative_prototypes < 0:
            raise ConfigError("method.num_negative_prototypes must be >= 0")
        if self.kmeans_iters < 1 or self.kmeans_redo < 1:
            raise ConfigError("method.kmeans_iters and method.kmeans_redo must be >= 1 "
                              "(reference: 20 and 5)")
        if not self.concentration_alpha > 0:
            raise ConfigError("method.concentration_alpha must be > 0 (PCL: 10)")
        lo, hi = self.concentration_clip_percentiles
        if not 0 <= lo <= hi <= 100:
            raise ConfigError("method.concentration_clip_percentiles must satisfy "
                              f"0 <= low <= high <= 100, got ({lo}, {hi}); reference: (10, 90)")


class PCL(MoCo):
    """MoCo v2 plus ProtoNCE on k-means prototypes of the momentum embeddings (Li et al. 2021)."""

    name = "pcl"
    description = "PCL: MoCo v2 plus ProtoNCE on k-means prototypes of the data (Li et al. 2021)"
    Config = PCLConfig
    config: PCLConfig

    assignments: torch.Tensor
    cluster_epoch: int  # epoch of the last clustering; -1: none yet

    def __init__(self, backbone: nn.Module, feature_dim: int, config: PCLConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        for m, k in enumerate(c.num_clusters):
            self.register_buffer(f"centroids_{m}", torch.zeros(k, c.proj_dim))
            self.register_buffer(f"concentration_{m}", torch.ones(k))
        # (clusterings, dataset size): allocated in on_train_start / resized by load_state_dict
        self.register_buffer("assignments", torch.zeros(len(c.num_clusters), 0, dtype=torch.long))
        sized_by_checkpoint(self, "assignments")
        host_counters(self, cluster_epoch=-1)

    # --- state ------------------------------------------------------------------------------
    def clustering(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centroids (k, d) and scaled concentrations (k,) of clustering ``m``."""
        return getattr(self, f"centroids_{m}"), getattr(self, f"concentration_{m}")

    @property
    def clustered(self) -> bool:
        """Whether a clustering exists (ProtoNCE is on); known on the host."""
        return self.cluster_epoch >= 0

    # --- clustering -------------------------------------------------------------------------
    @torch.no_grad()
    def momentum_features(self, ctx: TrainContext) -> torch.Tensor:
        """Normalised momentum-encoder embeddings of every training image, in dataset order.

        Each rank embeds its shard of ``ctx.eval_batches()``; sums over ranks of the features
        and of how often each index was seen (padding may repeat images) give every rank the
        whole dataset.
        """
        was_training = self.training
        self.eval()
        try:
            feats = dataset_embeddings(ctx.eval_batches(), self.key, ctx.dataset_size,
                                       self.config.proj_dim, self.queue.features.device, "PCL")
        finally:
            self.train(was_training)
        return F.normalize(feats, dim=1)

    @torch.no_grad()
    def cluster(self, features: torch.Tensor, epoch: int) -> None:
        """k-means of ``features`` for every cluster count into the buffers (rank 0's result)."""
        c = self.config
        main = get_rank() == 0
        for m, k in enumerate(c.num_clusters):
            centroids, concentration = self.clustering(m)
            if main:
                cent, assign = run_kmeans(features, k, c.kmeans_iters, c.kmeans_seed + m,
                                          c.kmeans_redo)
                phi = cluster_concentration(features, cent, assign, c.concentration_alpha)
                centroids.copy_(cent)
                concentration.copy_(scale_concentration(phi, c.temperature,
                                                        c.concentration_clip_percentiles))
                self.assignments[m].copy_(assign)
            elif is_distributed():
                centroids.zero_()
                concentration.zero_()
                self.assignments[m].zero_()
            all_reduce_sum(centroids)  # a broadcast from rank 0: the others add zeros
            all_reduce_sum(concentration)
            all_reduce_sum(self.assignments[m])
        self.cluster_epoch = epoch

    def _ensure_assignments(self, dataset_size: int) -> None:
        if self.assignments.shape[1] == dataset_size:
            return
        if self.clustered:
            raise ConfigError(
                f"PCL: the checkpoint's clustering covers {self.assignments.shape[1]} images but "
                f"the training set has {dataset_size}; resume with the same dataset")
        self.assignments = torch.zeros(len(self.config.num_clusters), dataset_size,
                                       dtype=torch.long, device=self.assignments.device)

    # --- hooks ------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        self._ensure_assignments(ctx.dataset_size)

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """After warm-up, re-cluster the momentum embeddings of the whole training set."""
        if ctx.epoch < self.config.warmup_epochs:
            return
        self._ensure_assignments(ctx.dataset_size)
        self.cluster(self.momentum_features(ctx), ctx.epoch)

    # --- the step ---------------------------------------------------------------------------
    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        out, queries = self.instance_step(views)
        if not self.clustered:
            return out
        if views.index is None:
            raise RuntimeError("PCL needs the dataset index of every image (views.index)")
        index = views.index.to(self.assignments.device)
        terms, top1 = [], []
        for m, k in enumerate(self.config.num_clusters):
            centroids, concentration = self.clustering(m)
            positive = self.assignments[m, index]
            candidates = candidate_prototypes(positive, k, self.config.num_negative_prototypes)
            prototypes = F.normalize(centroids, dim=1)
            for q in queries:
                logits, target = proto_nce_logits(q, prototypes, concentration, positive,
                                                  candidates)
                terms.append(F.cross_entropy(logits, target))
                top1.append((logits.detach().argmax(1) == target).float().mean())
        proto = torch.stack(terms).mean()
        metrics = dict(out.metrics)
        metrics.update(instance_loss=out.loss.detach(), proto_loss=proto.detach(),
                       proto_top1=torch.stack(top1).mean())
        return StepOutput(out.loss + proto, metrics)

    @torch.no_grad()
    def cluster_assignments(self, images: torch.Tensor) -> torch.Tensor | None:
        """Nearest centroid (Euclidean, as k-means assigns) of the first clustering."""
        if not self.clustered:
            return None
        centroids, _ = self.clustering(0)
        return torch.cdist(self.key(images).float(), centroids.float()).argmin(dim=1)

