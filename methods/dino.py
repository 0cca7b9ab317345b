"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", ICCV).

Algorithm (Sec. 3.1, Algorithm 1, Fig. 2): a student g_s (backbone + head) and a teacher g_t of
the same architecture, the teacher an exponential moving average of the student (Sec. 3.1,
"Teacher network"; momentum raised from 0.996 to 1 by a cosine). The teacher sees the global
crops only, the student every crop (multi-crop, Sec. 3.1). Each output is a K-dimensional
score vector; the teacher's is centred (an EMA centre c of its outputs, momentum 0.9) and
sharpened by a low temperature, the student's softened by tau_s = 0.1, and the loss is the
cross-entropy H(P_t(x), P_s(x')) summed over every (teacher crop x, student crop x') pair of
different crops, divided by the number of pairs (the official code averages; Eq. 3 sums).
The head (App. / official ``DINOHead``): a 3-layer MLP with GELU (hidden 2048, bottleneck 256),
l2 normalisation, then a weight-normalised linear layer to K = 65,536 whose norm is fixed to 1
and which is frozen for the first epoch. The teacher temperature warms up linearly (0.04 ->
0.07 over 30 epochs in the longer runs; 0.04 constant by default).

Where we differ from the official code (facebookresearch/dino, ``main_dino.py``), and why:

- The centre and the teacher move in ``after_optimizer_step``, masked by ``ctx.step_ok``: a
  skipped (non-finite) step leaves both as they were; the official code stops the run instead.
- The loss is computed in float32 with autocast off (the official code runs it in fp16 under
  ``torch.cuda.amp``); the softmax over 65,536 scores at temperature 0.04 is where fp16 hurts.
- The teacher's batch-norm layers (ResNets) use the teacher's own batch statistics, as the
  official code, but not SyncBatchNorm unless ``train.sync_bn`` is set.
- Batch norm in the head's MLP by default (``head_batch_norm``; official off): at small scale
  without it the teacher's outputs stay near uniform and nothing is learned in a short run.
- The learning-rate, weight-decay (0.04 -> 0.4 cosine) and gradient-clipping settings are the
  trainer's (``train.*``, set in the recipes): ssl-zoo clips the global gradient norm, the
  official code each parameter's own norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.data.views import CropGroup, Views, ViewSpec, require_crops
from ssl_zoo.data.views.spec import IMAGENET_MEAN, IMAGENET_STD
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.modules.distributed import all_reduce_sum, get_world_size
from ssl_zoo.modules.heads import WeightNormLinear, mlp_head
from ssl_zoo.modules.momentum import ema_update_, momentum_at, momentum_copy, momentum_problem

MIN_GLOBAL_CROPS = 2  # the teacher's crops: the spec's global ones (DINO Sec. 3.1: two)


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float,
              teacher_crops: tuple[int, ...] | None = None) -> torch.Tensor:
    """DINO's loss (Sec. 3.1, Eq. 3 and Algorithm 1), averaged over crop pairs.

    ``student_out``: (S, B, K) scores of S student crops; ``teacher_out``: (T, B, K) raw scores
    of T teacher crops; ``center``: (K,) the centre subtracted from the teacher's scores.
    ``teacher_crops[i]``: the student crop that teacher crop i is (default: crop i), which
    takes no part in its pair. Returns the mean over the T x S - T pairs (i, v) of
    ``mean_b sum_k -softmax((t_i - c) / tau_t)_k log softmax(s_v / tau_s)_k``, in float32 at
    least; the
    teacher side carries no gradient.
    """
    n_teacher, n_student = teacher_out.shape[0], student_out.shape[0]
    crops = tuple(range(n_teacher)) if teacher_crops is None else tuple(teacher_crops)
    if len(crops) != n_teacher or not all(0 <= c < n_student for c in crops):
        raise ValueError(f"teacher_crops {crops} must name {n_teacher} student crops "
                         f"in 0..{n_student - 1}")
    if n_teacher * n_student - n_teacher < 1:
        raise ValueError("DINO needs at least one (teacher crop, other student crop) pair")
    dtype = torch.promote_types(student_out.dtype, torch.float32)  # float64 stays float64
    with torch.autocast(student_out.device.type, enabled=False):
        targets = F.softmax((teacher_out.detach().to(dtype) - center.to(dtype)) / teacher_temp,
                            dim=-1)
        log_probs = F.log_softmax(student_out.to(dtype) / student_temp, dim=-1)
        # cross[i, v] = sum over batch and scores of -P_t(crop i) log P_s(crop v)
        cross = -torch.einsum("tbk,sbk->ts", targets, log_probs)
        same = torch.stack([cross[i, v] for i, v in enumerate(crops)]).sum()  # host indices
        return (cross.sum() - same) / ((n_teacher * n_student - n_teacher)
                                       * student_out.shape[1])


def teacher_temp_at(epoch: int, warmup_epochs: int, warmup_temp: float, temp: float) -> float:
    """Teacher temperature of an epoch: a linear ramp from ``warmup_temp`` at epoch 0 to
    ``temp`` at epoch ``warmup_epochs - 1`` (``numpy.linspace``, as the official
    ``teacher_temp_schedule``), then ``temp`` (Sec. 4 / App.: 0.04 -> 0.07 over 30 epochs)."""
    if epoch >= warmup_epochs:
        return float(temp)
    if warmup_epochs == 1:
        return float(warmup_temp)
    return float(warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1))


# --------------------------------------------------------------------------------------------
# the head
# --------------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """MLP (GELU) -> l2 normalisation -> weight-normalised linear layer to ``out_dim`` scores
    (official ``DINOHead``): hidden Linears and the bottleneck keep their biases, the last layer
    has none, and its weight norm is fixed at 1 unless ``learn_norm``."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int,
                 num_layers: int = 3, batch_norm: bool = False, learn_norm: bool = False):
        super().__init__()
        self.mlp = mlp_head(in_dim, hidden_dim, bottleneck_dim, num_layers=num_layers,
                            batch_norm=batch_norm, activation="gelu", last_bias=True)
        for m in self.mlp.modules():  # the official initialisation of the MLP
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_norm=learn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class DINOConfig(MethodConfig):
    """DINO hyper-parameters; defaults suit a few thousand CIFAR-size images on a CPU (the
    paper's ImageNet values are in recipes/dino/)."""

    out_dim: int = 1024
    """K, the number of output scores (official: 65,536 on ImageNet)."""
    hidden_dim: int = 512
    """Hidden width of the head's MLP (official: 2048)."""
    bottleneck_dim: int = 128
    """Output width of the MLP, before l2 normalisation and the last layer (official: 256)."""
    head_layers: int = 3
    """Linear layers of the head's MLP (official: 3)."""
    head_batch_norm: bool = True
    """Batch norm in the head's MLP. Official: off (``--use_bn_in_head false``, the ImageNet
    recipes); on by default here: on demo (10 epochs, ConvNet) without it the bottleneck
    outputs of all images start nearly parallel (mean cosine 0.71; 0.18 with it), the centred
    teacher stays near uniform (entropy 6.5 of ln K = 6.9) and kNN top-1 did not move (teacher
    0.343, random init 0.332); with it 0.370."""
    norm_last_layer: bool = True
    """Fix the last layer's weight norm to 1 (official default; false lets it train, which the
    README recommends for ViT-S only: better but less stable)."""
    freeze_last_layer_epochs: int = 1
    """Epochs during which the last layer is not updated (its gradient dropped; official: 1)."""
    student_temp: float = 0.1
    """Student temperature tau_s (paper: 0.1)."""
    teacher_temp: float = 0.04
    """Teacher temperature tau_t after the warm-up (paper: 0.04; 0.07 in the longer runs)."""
    warmup_teacher_temp: float = 0.04
    """Teacher temperature at epoch 0, raised linearly to teacher_temp (paper: 0.04)."""
    warmup_teacher_temp_epochs: int = 0
    """Epochs of the linear teacher-temperature warm-up (0: none; paper's longer runs: 30)."""
    center_momentum: float = 0.9
    """EMA momentum of the teacher centre (paper: 0.9)."""
    momentum: float = 0.99
    """Teacher EMA momentum at step 0, raised to 1 by momentum_schedule (paper: 0.996, for
    ImageNet's 250k+ steps; 0.99 lets the teacher follow a run of a few hundred steps)."""
    momentum_schedule: str = "cosine"
    """cosine (the paper: from momentum to 1 over training) or constant."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"method.{msg}")

        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.freeze_last_layer_epochs >= 0, "freeze_last_layer_epochs must be >= 0")
        need(self.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs must be >= 0")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)} "
                                          "(paper: student 0.1, teacher 0.04-0.07)")
        need(0 <= self.center_momentum < 1,
             f"center_momentum must be in [0, 1), got {self.center_momentum} (paper: 0.9)")
        problem = momentum_problem(self.momentum, self.momentum_schedule, "paper: 0.996")
        need(problem is None, problem or "")


def dino_views(image_size: int, n_local: int, local_size: int,
               global_scale: tuple[float, float], local_scale: tuple[float, float],
               blur: bool) -> ViewSpec:
    """DINO's multi-crop (official ``DataAugmentationDINO``): flip, colour jitter (0.4, 0.4,
    0.2, 0.1) with p=0.8, grayscale p=0.2 on every crop; global crop 1 always blurred, global
    crop 2 blurred with p=0.1 and solarised with p=0.2, local crops blurred with p=0.5 (sigma
    0.1-2, the PIL blur: no kernel cap); ``blur=False`` turns every blur off."""
    def crops(count, size, scale, blur_p, role, solarize_p=0.0):
        return CropGroup(count=count, size=size, scale=tuple(scale), brightness=0.4,
                         contrast=0.4, saturation=0.2, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
                         blur_p=blur_p if blur else 0.0, blur_kernel_frac=0.0,
                         solarize_p=solarize_p, role=role)

    groups = [crops(1, image_size, global_scale, 1.0, "global"),
              crops(1, image_size, global_scale, 0.1, "global", solarize_p=0.2),
              crops(n_local, local_size, local_scale, 0.5, "local")]
    return ViewSpec(groups=groups)


class DINO(Method):
    """Self-distillation with no labels: a student matches an EMA teacher's centred, sharpened
    outputs across crops (Caron et al. 2021).

    Evaluated and exported network (``eval_networks``): the teacher's backbone by default, as
    the paper reports (Sec. 3.1 and Fig. 6: the teacher performs better than the student
    throughout training, and the official evaluations load ``teacher``); ``student`` is the
    other choice.
    """

    name = "dino"
    description = "DINO: self-distillation of an EMA teacher over multi-crop (Caron et al. 2021)"
    Config = DINOConfig
    config: DINOConfig
    default_eval_network: ClassVar[str] = "teacher"

    def __init__(self, backbone: nn.Module, feature_dim: int, config: DINOConfig | None = None):
        super().__init__(backbone, feature_dim, config)
        c = self.config
        self.head = DINOHead(feature_dim, c.hidden_dim, c.bottleneck_dim, c.out_dim,
                             num_layers=c.head_layers, batch_norm=c.head_batch_norm,
                             learn_norm=not c.norm_last_layer)
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(c.out_dim))
        self._pending_center: torch.Tensor | None = None  # this step's batch centre

    def eval_networks(self) -> dict[str, nn.Module]:
        """The backbones evaluation and export may use: teacher (default) and student."""
        return {"teacher": self.teacher_backbone, "student": self.backbone}

    @classmethod
    def default_views(cls, config: DINOConfig, image_size: int) -> ViewSpec:
        """Multi-crop as the official code: ImageNet-size images (>= 192 px) 2 x
        ``image_size`` at scale (0.4, 1) + 8 x 96 at (0.05, 0.4) (``main_dino.py`` defaults)
        with ImageNet normalisation. Smaller images: 2 global crops of the image size and 6
        local crops of half of it, no blur below 96 px (blur on CIFAR-size crops removes most
        of the signal, as in SimCLR's CIFAR recipe)."""
        if image_size >= 192:
            spec = dino_views(image_size, 8, 96, (0.4, 1.0), (0.05, 0.4), blur=True)
            spec.mean, spec.std = IMAGENET_MEAN, IMAGENET_STD
            return spec
        return dino_views(image_size, 6, max(1, image_size // 2), (0.4, 1.0), (0.05, 0.4),
                          blur=image_size >= 96)

    @classmethod
    def check_views(cls, config: DINOConfig, spec: ViewSpec) -> None:
        """The teacher needs at least two global crops (the view spec's roles)."""
        require_crops(spec, "global", MIN_GLOBAL_CROPS, cls.name)

    # --- pieces ---------------------------------------------------------------------------
    def teacher_scores(self, views: Views, crops: list[int]) -> torch.Tensor:
        """(T, B, K) teacher scores of the crops ``crops`` (the global ones), no gradient;
        one teacher pass per resolution."""
        with torch.no_grad():
            chosen = Views.from_crops([views[i] for i in crops])
            feats = torch.cat(self.encode_views(chosen, self.teacher_backbone))
            return torch.stack(self.teacher_head(feats).chunk(len(crops)))

    # --- the step -------------------------------------------------------------------------
    def forward(self, views: Views, ctx: TrainContext | None = None) -> StepOutput:
        ctx = TrainContext() if ctx is None else ctx  # outside the trainer: epoch 0
        c = self.config
        crops = views.crop_indices("global")  # host list: no device work
        if len(crops) < MIN_GLOBAL_CROPS:
            raise ConfigError(f"{self.name} needs at least {MIN_GLOBAL_CROPS} global crops per "
                              f"image (the teacher's), got roles {views.roles}")
        teacher = self.teacher_scores(views, crops)  # (T, B, K)
        feats = self.encode_views(views)  # one backbone pass per resolution group
        student = torch.stack(self.head(torch.cat(feats)).chunk(len(feats)))  # (S, B, K)
        temp = teacher_temp_at(ctx.epoch, c.warmup_teacher_temp_epochs, c.warmup_teacher_temp,
                               c.teacher_temp)
        loss = dino_loss(student, teacher, self.center, c.student_temp, temp,
                         teacher_crops=tuple(crops))
        with torch.no_grad():  # the centre moves after the step: the mean over all ranks
            t = teacher.float()
            batch_center = all_reduce_sum(t.sum(dim=(0, 1)))
            self._pending_center = batch_center / (t.shape[0] * t.shape[1] * get_world_size())
        metrics: dict[str, Any] = {"teacher_temp": temp}
        if ctx.log_step:
            with torch.no_grad():
                p = F.softmax((t - self.center) / temp, dim=-1)
                metrics["teacher_entropy"] = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
        return StepOutput(loss, metrics, debug={"teacher": teacher.detach(),
                                                "student": student.detach()})

    # --- hooks ------------------------------------------------------------------------------
    def before_optimizer_step(self, ctx: TrainContext) -> None:
        """Keep the last layer fixed during the first epoch(s): drop its gradient (official
        ``cancel_gradients_last_layer``)."""
        if ctx.epoch < self.config.freeze_last_layer_epochs:
            self.head.last_layer.drop_grad_()

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """EMA of the teacher (backbone and head) with this step's momentum, and of the centre
        (Sec. 3.1, Eq. 4); a skipped step (``ctx.step_ok`` False) moves neither."""
        c = self.config
        m = momentum_at(ctx.step, ctx.total_steps, c.momentum, c.momentum_schedule)
        ema_update_(self.teacher_backbone, self.backbone, m, apply=ctx.step_ok)
        ema_update_(self.teacher_head, self.head, m, apply=ctx.step_ok)
        if self._pending_center is not None:
            moved = self.center * c.center_momentum \
                + self._pending_center * (1 - c.center_momentum)
            if ctx.step_ok is not None:
                moved = torch.where(ctx.step_ok, moved, self.center)
            self.center.copy_(moved)
            self._pending_center = None
