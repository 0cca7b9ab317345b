"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS).

Algorithm (Sec. 3.1, App. A.1 Algorithm 1, with multi-crop from Sec. 3.2): every crop goes
through the backbone and an MLP head to a unit embedding z, scored against K unit prototypes c
(scores z^T c are cosines). For the assigned crops (``crops_for_assign``; by default the view
spec's global crops, ``views.groups.N.role``: the two large ones) the codes q are computed
without gradient by a few Sinkhorn-Knopp iterations that split the batch equally among the
prototypes; every other crop then has to predict those codes through
softmax(z^T c / T). The loss is the cross-entropy of that swapped prediction, averaged over all
(assigned crop, predicting crop) pairs. Small batches add a queue of embeddings from earlier
batches to the Sinkhorn problem (Sec. 4.3 / App. A.1), so that it sees enough samples.

Where we differ from the official code (facebookresearch/swav, ``main_swav.py``), and why:

- Sinkhorn runs in the log domain (:func:`sinkhorn`). In exact arithmetic it is the same
  iteration; in float32 it cannot overflow or underflow whatever ``epsilon`` (the official
  ``exp(scores / epsilon)`` of cosines overflows or underflows float32 below epsilon ~ 0.011).
- The queue is one global queue kept identical on every rank (the batch embeddings of all ranks
  are gathered into it); each rank puts its own ``1 / world_size`` slice of it into the
  distributed Sinkhorn. The official code keeps a separate queue of local embeddings per rank.
  Both give the same Sinkhorn problem (the same set of rows), but ours can be checkpointed by
  rank 0 alone and resumed with another number of processes.
- Prototype scores and codes are computed in float32 with autocast off, whatever the AMP
  setting (the official code runs them in fp16 under apex O1).
- ImageNet-size views are normalised with torchvision's ImageNet std (0.229, 0.224, 0.225), as
  MoCo, PCL and every torchvision checkpoint; the official code has 0.228 for red (0.4% apart).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import Views, ViewSpec, crop_list_problem, multi_crop, require_crops
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules import distributed as D
from ssl_zoo.modules.collapse import CollapseMonitor
from ssl_zoo.modules.heads import mlp_head
from ssl_zoo.modules.prototypes import Prototypes
from ssl_zoo.modules.queue import FeatureQueue
from ssl_zoo.modules.sinkhorn import sinkhorn
from ssl_zoo.modules.state import host_counters


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def crops_for_assign_problem(crops_for_assign: Sequence[int], n_crops: int | None = None
                             ) -> str | None:
    """What is wrong with ``crops_for_assign`` for ``n_crops`` crops (None: not known yet), or
    None: the shared rule of a crop list (:func:`~ssl_zoo.data.views.crop_list_problem`) on a
    view spec of >= 2 crops. The one rule, raised as ConfigError by the config, the view-spec
    check and ``forward``, and as ValueError by :func:`swapped_prediction_loss`."""
    if n_crops is not None and n_crops < 2:
        problem = f"crops_for_assign: SwAV needs >= 2 crops, the view spec has {n_crops}"
    else:
        problem = crop_list_problem("crops_for_assign", crops_for_assign, n_crops)
    return problem and f"{problem}; the paper uses (0, 1), the two global crops"


def swapped_prediction_loss(scores_per_crop: Sequence[torch.Tensor],
                            codes_per_assigned_crop: Sequence[torch.Tensor],
                            crops_for_assign: Sequence[int] = (0, 1),
                            temperature: float = 0.1) -> torch.Tensor:
    """SwAV swapped-prediction loss (Sec. 3.1 Eq. 1-2; multi-crop Sec. 3.2, Eq. 5).

    ``scores_per_crop[v]`` (B, K) are crop v's prototype scores; ``codes_per_assigned_crop[j]``
    (B, K) the codes of crop ``crops_for_assign[j]``. Returns the mean, over all pairs (assigned
    crop s, crop t != s), of the batch mean of ``-sum_k q_s[b, k] log softmax(scores_t[b] / T)_k``.
    Computed in float32 (float64 for float64 scores) with autocast off.
    """
    n_crops = len(scores_per_crop)
    if len(codes_per_assigned_crop) != len(crops_for_assign):
        raise ValueError(f"{len(codes_per_assigned_crop)} codes for "
                         f"{len(crops_for_assign)} assigned crops")
    problem = crops_for_assign_problem(crops_for_assign, n_crops)
    if problem:
        raise ValueError(problem)
    device = scores_per_crop[0].device
    with torch.autocast(device.type, enabled=False):
        dtype = torch.promote_types(scores_per_crop[0].dtype, torch.float32)
        log_p = torch.stack([F.log_softmax(s.to(dtype) / temperature, dim=1)
                             for s in scores_per_crop])  # (V, B, K)
        log_p_sum = log_p.sum(dim=0)
        loss = log_p.new_zeros(())
        for crop, q in zip(crops_for_assign, codes_per_assigned_crop):
            others = log_p_sum - log_p[crop]  # sum over the crops t != s
            loss = loss - (q.detach().to(others.dtype) * others).sum(dim=1).mean()
        return loss / (len(crops_for_assign) * (n_crops - 1))


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@dataclass
class SwAVConfig(MethodConfig):
    """SwAV hyper-parameters. The defaults are for small scale (small ConvNet, 32-px images,
    batch 128, Adam), chosen by ``benchmarks/bench_swav_sweep.py`` (first 5,000 CIFAR-10 images,
    6 epochs, kNN top-1; the table is in ``benchmarks/README.md``): few prototypes, a low
    epsilon, temperature 0.1, no queue (long queues started early fell below random
    initialisation; short ones started late, 3 seeds, changed nothing).
    The paper's ImageNet settings are recipes: ``recipes/swav/imagenet-bs4096.yaml`` and
    ``imagenet-bs256.yaml``."""

    # --- projection head and prototypes ---
    feat_dim: int = 128
    """Size of the L2-normalised embedding the prototypes score (paper: 128)."""
    hidden_dim: int = 0
    """Hidden width of the 2-layer MLP head; 0: the backbone's feature size (2048 for ResNet-50,
    as the paper; 512 for ResNet-18; 256 for the small ConvNet)."""
    num_prototypes: int = 100
    """K, the number of prototypes (paper: 3000 on ImageNet; on 5,000 CIFAR-10 images 30-100
    learned, 512 stayed near ln K)."""
    learn_prototypes: bool = True
    """False: fixed random unit prototypes that are never trained (ablation, Sec. 4.3)."""
    freeze_prototypes_iters: int = 0
    """Keep the prototypes fixed for this many first iterations by dropping their gradient
    (paper: 313 at batch 4096, 5005 at batch 256)."""

    # --- codes (Sinkhorn) ---
    epsilon: float = 0.03
    """Entropy weight of the Sinkhorn codes; lower is peakier (paper: 0.05; 0.03 learns better
    at small scale)."""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations (paper: 3)."""
    sinkhorn_float64: bool = False
    """Run Sinkhorn in float64 instead of float32."""
    hard_assignment_iters: int = 0
    """Use one-hot codes (argmax of the Sinkhorn codes) for this many first iterations."""
    crops_for_assign: tuple[int, ...] | None = None
    """Crops whose codes are computed and predicted by all others, as indices into the crops in
    view-spec order; null: the view spec's global crops (views.groups.N.role; the paper: the 2
    global crops, (0, 1)), settled in the run's config.json."""

    # --- swapped prediction ---
    temperature: float = 0.1
    """Softmax temperature of the predictions (paper: 0.1)."""

    # --- queue ---
    queue_length: int = 0
    """Embeddings from earlier batches added to Sinkhorn per assigned crop, over all processes;
    0: no queue (paper: 3840 at batch 256). Any length works, the ring buffer wraps exactly (the
    official code asks for a multiple of the batch only to shift its queue by whole batches), so
    a run can resume with another number of processes (another global batch)."""
    queue_start_epoch: int = 3
    """First epoch (0-based) whose embeddings fill the queue; it is used once full (paper: 15)."""

    # --- collapse monitor ---
    collapse_patience_iters: int = 100
    """Warn once when the loss stays at ln K, or <= 2 prototypes are used, for this many
    consecutive iterations; 0: never warn."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        """Raise ConfigError for values that cannot work; ``batch_size`` is the global batch."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"method.{msg}")

        need(self.feat_dim >= 1, f"feat_dim must be >= 1, got {self.feat_dim}")
        need(self.hidden_dim >= 0, f"hidden_dim must be >= 0 (0: backbone size), got "
                                   f"{self.hidden_dim}")
        need(self.num_prototypes >= 2, f"num_prototypes must be >= 2 (one prototype makes the "
                                       f"loss 0), got {self.num_prototypes}")
        if dataset_size > 0:
            need(self.num_prototypes <= dataset_size,
                 f"num_prototypes: {self.num_prototypes} prototypes for {dataset_size} images "
                 f"cannot be filled equally; use at most {dataset_size} (30-100 work at "
                 f"small scale)")
        need(self.epsilon > 0, f"epsilon must be > 0 (paper: 0.05), got {self.epsilon}")
        need(self.temperature > 0, f"temperature must be > 0 (paper: 0.1), got "
                                   f"{self.temperature}")
        need(self.sinkhorn_iterations >= 1,
             f"sinkhorn_iterations must be >= 1 (paper: 3), got {self.sinkhorn_iterations}")
        for name in ("freeze_prototypes_iters", "hard_assignment_iters", "queue_start_epoch",
                     "collapse_patience_iters"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crops_for_assign is not None:  # the crops there are: check_views
            problem = crops_for_assign_problem(self.crops_for_assign)
            need(problem is None, str(problem))
        need(self.queue_length >= 0, f"queue_length must be >= 0 (0: no queue), got "
                                     f"{self.queue_length}")
        rows = batch_size + self.queue_length
        if self.num_prototypes > rows:
            warnings.warn(
                f"SwAV: {self.num_prototypes} prototypes but only {rows} embeddings per "
                f"Sinkhorn problem (batch + queue): the equipartition forces every code to "
                f"spread over >= {self.num_prototypes / rows:.1f} prototypes. The paper adds a "
                f"queue for small batches: queue_length >= {self.num_prototypes - batch_size} "
                f"(e.g. a multiple of {batch_size}), or use fewer prototypes.",
                stacklevel=2,
            )


def collapse_remedies(c: SwAVConfig) -> list[str]:
    """The official README's workarounds for a loss stuck at ln K ("Common Issues") that this
    config has not applied yet, as settings to change."""
    out = []
    if c.epsilon > 0.03:
        out.append(f"a lower epsilon (method.epsilon=0.03, now {c.epsilon})")
    if c.learn_prototypes and c.freeze_prototypes_iters == 0:
        out.append("freeze the prototypes for the first iterations "
                   "(method.freeze_prototypes_iters)")
    if c.hard_assignment_iters == 0:
        out.append("hard assignments for the first iterations (method.hard_assignment_iters)")
    out.append("a simpler problem: fewer crops or softer augmentation (views.groups.*)")
    return out


def queue_remedies(c: SwAVConfig) -> list[str]:
    """The official README's fixes for training made worse by the queue."""
    return [f"a shorter queue (method.queue_length, now {c.queue_length})",
            f"start it later (method.queue_start_epoch, now {c.queue_start_epoch})"]


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
class SwAV(Method):
    """SwAV: predict the Sinkhorn cluster codes of one crop from the other crops."""

    name = "swav"
    description = "swapped prediction of equipartitioned cluster codes (Caron et al. 2020)"
    Config = SwAVConfig
    config: SwAVConfig

    iteration: int  # optimiser steps done (hard codes for the first hard_assignment_iters)
    epoch: int  # the current epoch (the queue fills from queue_start_epoch)

    def __init__(self, backbone: nn.Module, feature_dim: int, config: SwAVConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.projection = mlp_head(feature_dim, c.hidden_dim or feature_dim, c.feat_dim)
        self.prototypes = Prototypes(c.feat_dim, c.num_prototypes, learnable=c.learn_prototypes)
        # one queue per assigned crop; filled (FeatureQueue.filled) from queue_start_epoch.
        # Unsettled (null: built directly, not from a run config): as many as the global crops
        # of the default spec (2); forward checks the views have that many.
        n_assigned = (len(c.crops_for_assign) if c.crops_for_assign is not None
                      else len(self.default_views(c, 224).crop_indices("global")))
        self.queues = nn.ModuleList(
            [FeatureQueue(c.queue_length, c.feat_dim) for _ in range(n_assigned)]
            if c.queue_length > 0 else [])
        # where the run is, as host ints saved in the state_dict: a step never reads the device
        host_counters(self, iteration=0, epoch=0)
        self._pending: list[torch.Tensor] = []  # this step's embeddings, for the queue
        self.monitor = CollapseMonitor(
            c.num_prototypes, c.collapse_patience_iters, method="SwAV",
            advice="On small data, fewer prototypes (method.num_prototypes 30-100), a lower "
                   "epsilon (0.03) and Adam learned in our measurements, while SGD with 100+ "
                   "prototypes stayed at ln K.",
            remedies=collapse_remedies(c), queue_remedies=queue_remedies(c))

    @classmethod
    def default_views(cls, config: SwAVConfig, image_size: int) -> ViewSpec:
        """Multi-crop (Sec. 3.2), scales (0.14, 1) and (0.05, 0.14) as the official code.

        ImageNet-size images (>= 192 px): 2 x ``image_size`` + 6 x 96, colour strength 1 and
        blur p=0.5, as the paper (its blur kernel not capped at 10% of the crop: the official
        code's PIL blur has no such cap). Smaller images: 2 x image size + 4 x half of it, no
        blur, colour strength 1 above 64 px and 0.5 at CIFAR size (SimCLR's CIFAR recipe; what
        learned here: demo, 40 epochs, kNN k=20 0.403 against 0.346 with 1, random init 0.332).
        At 32 px and below the local crops are off by default (count 0; ``--set
        views.groups.1.count=4`` turns them on): in short runs on CIFAR-10 two 32-px crops
        learned more per epoch than 2x32 + 4x16 (0.407 against 0.385 kNN top-1, 3 seeds each,
        6 epochs of 5,000 images; ``benchmarks/bench_swav_sweep.py``) and cost 0.7x the time.
        Crops are changed through ``views.*`` (``--set views.groups.1.count=6``; a count of 0
        leaves a group out).
        """
        large = image_size >= 192
        spec = multi_crop(
            global_size=image_size, local_size=96 if large else max(1, image_size // 2),
            n_local=6 if large else 4, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14),
            strength=1.0 if image_size > 64 else 0.5, blur_p=0.5 if image_size >= 96 else 0.0,
            blur_kernel_frac=0.0)
        if image_size <= 32:
            spec.groups[1].count = 0  # kept, so that views.groups.1.count=N turns it on
        return spec

    @classmethod
    def settle_config(cls, config: SwAVConfig, spec: ViewSpec) -> None:
        """``crops_for_assign`` null: the view spec's global crops (there must be one)."""
        if config.crops_for_assign is None:
            config.crops_for_assign = tuple(require_crops(
                spec, "global", 1, "SwAV (method.crops_for_assign null: codes of its global "
                                   "crops)"))

    @classmethod
    def check_views(cls, config: SwAVConfig, spec: ViewSpec) -> None:
        """The assigned crops must exist in the view spec."""
        crops = (spec.crop_indices("global") if config.crops_for_assign is None
                 else config.crops_for_assign)
        problem = crops_for_assign_problem(crops, spec.num_crops)
        if problem:
            raise ConfigError(f"method.{problem}")

    # --- pieces ---------------------------------------------------------------------------------
    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (float32) of backbone features through the projection head."""
        z = self.projection(features)
        with torch.autocast(z.device.type, enabled=False):
            return F.normalize(z.float(), dim=1)

    def _queue_rows(self, queue: FeatureQueue) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the (globally identical) queue for the distributed Sinkhorn,
        embeddings and ``written`` flags: consecutive slices whose sizes differ by at most one
        row (Sinkhorn allows unequal shares), so any queue length works with any number of
        processes."""
        world, rank = D.get_world_size(), D.get_rank()
        return (queue.features.tensor_split(world)[rank],
                queue.written.tensor_split(world)[rank])

    @torch.no_grad()
    def compute_codes(self, scores: torch.Tensor, queue: FeatureQueue | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Codes (B, K) of a batch's scores, and the codes of this rank's queue rows (None
        without a queue in use). With a full queue the codes come from one Sinkhorn problem on
        [queue scores; batch scores], the queue re-scored with the current prototypes; slots
        that hold no embedding (a step skipped during the fill left its initial random vector)
        take no part and get code rows of 0. Deviation: the official code has no such slots to
        leave out, as it has no skipped steps."""
        c = self.config
        rows, valid = scores.detach(), None
        if queue is not None and queue.is_full:
            features, written = self._queue_rows(queue)
            with torch.autocast(rows.device.type, enabled=False):
                queued = self.prototypes(features.float())
            rows = torch.cat([queued.to(rows.dtype), rows])
            valid = torch.cat([written, written.new_ones(scores.shape[0])])
        all_codes = sinkhorn(rows, c.epsilon, c.sinkhorn_iterations, c.sinkhorn_float64,
                             valid=valid)
        b = scores.shape[0]
        codes = all_codes[-b:]
        if self.iteration < c.hard_assignment_iters:
            codes = torch.zeros_like(codes).scatter_(1, codes.argmax(dim=1, keepdim=True), 1.0)
        return codes, (all_codes[:-b] if valid is not None else None)

    def assigned_crops(self, views: Views) -> tuple[int, ...]:
        """The crops whose codes are computed: ``crops_for_assign``, or (null) the global crops
        of ``views``; ConfigError when they do not fit the views or the queues."""
        c = self.config
        crops = (tuple(views.crop_indices("global")) if c.crops_for_assign is None
                 else tuple(c.crops_for_assign))
        problem = crops_for_assign_problem(crops, len(views))
        if problem:  # the trainer checked the view spec; a direct call may pass other views
            raise ConfigError(f"method.{problem}")
        if self.queues and len(crops) != len(self.queues):
            raise ConfigError(f"method.crops_for_assign: {len(self.queues)} queues for "
                              f"{len(crops)} assigned crops {crops}; set crops_for_assign")
        return crops

    # --- the step -------------------------------------------------------------------------------
    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        """Swapped prediction over all crops (Sec. 3.1); the collapse indicators (metrics that
        cost time) only on log steps (``ctx.log_step``; outside a trainer, always)."""
        c = self.config
        n_crops = len(views)
        assigned = self.assigned_crops(views)
        feats = torch.cat(self.encode_views(views))  # one backbone pass per resolution
        z = self.embed(feats)  # (V B, feat_dim); the head sees all crops as one batch
        with torch.autocast(z.device.type, enabled=False):
            scores = self.prototypes(z)  # (V B, K) cosines, float32
        scores_per_crop = scores.chunk(n_crops)
        z_per_crop = z.detach().chunk(n_crops)

        use_queues = len(self.queues) > 0
        queue_in_use = use_queues and self.queues[0].is_full
        codes, queue_codes = zip(*[self.compute_codes(scores_per_crop[crop],
                                                      self.queues[j] if use_queues else None)
                                   for j, crop in enumerate(assigned)])
        # after use, this batch enters the queue: in after_optimizer_step, once the step is
        # known to be finite
        self._pending = ([z_per_crop[crop] for crop in assigned]
                         if use_queues and self.training and self.epoch >= c.queue_start_epoch
                         else [])

        loss = swapped_prediction_loss(scores_per_crop, codes, assigned, c.temperature)
        metrics: dict[str, Any] = {"ln_k": math.log(c.num_prototypes)}
        if ctx is None or ctx.log_step:
            metrics.update(self.monitor.metrics(
                loss, codes, queue_codes=[q for q in queue_codes if q is not None]
                if use_queues else None))
        if use_queues:
            metrics["queue_in_use"] = float(queue_in_use)
        debug = {"scores": scores.detach(), "embeddings": z.detach(),
                 **{f"codes_{j}": q for j, q in enumerate(codes)}}
        return StepOutput(loss, metrics, debug)

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_assignments(self, images: torch.Tensor) -> torch.Tensor:
        """Index of the best-scoring prototype of each image."""
        z = self.embed(self.backbone(images))
        with torch.autocast(z.device.type, enabled=False):
            return self.prototypes(z).argmax(dim=1)

    # --- hooks ------------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        """The collapse monitor counts from here."""
        self.monitor.start(ctx.step)

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """Remember the epoch (the queue fills from ``queue_start_epoch``) and the iteration."""
        self.epoch, self.iteration = ctx.epoch, ctx.step

    def before_optimizer_step(self, ctx: TrainContext) -> None:
        """Freeze the prototypes for the first iterations: drop their gradient (App. A.1)."""
        if ctx.step < self.config.freeze_prototypes_iters:
            self.prototypes.drop_grad_()

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """The step's embeddings enter the queue (unless ``ctx.step_ok`` says the step was
        skipped: then the slots keep their contents), and the prototypes go back onto the unit
        sphere after every step that moved them, so scores stay cosines (Sec. 3.1). Frozen or
        fixed prototypes are left alone: re-normalising unit rows can still flip their last
        bits, and resumed runs must match uninterrupted ones exactly."""
        for queue, z in zip(self.queues, self._pending):
            queue.enqueue(z, valid=ctx.step_ok)
        self._pending = []
        if self.prototypes.learnable and ctx.step >= self.config.freeze_prototypes_iters:
            self.prototypes.normalize_()
        self.iteration = ctx.step + 1

    def on_log(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        """Warn once if SwAV looks collapsed for ``collapse_patience_iters`` iterations, judged
        from the logged values (:class:`~ssl_zoo.modules.collapse.CollapseMonitor`)."""
        self.monitor.observe(ctx.step + 1, metrics)  # iterations done after the logged one
