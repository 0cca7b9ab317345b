"""The plug-in contract between the trainer and a self-supervised method (docs/design.md).

A method is an ``nn.Module`` subclass of :class:`Method`. It owns its heads, prototypes, queues and
momentum encoders, computes one step's loss from a list of augmented views, and may react to a few
trainer events through hooks. It never sees the optimiser, the data loader or the training loop.

What the trainer relies on (docs/design.md, "The plug-in contract"):

- ``forward(views, ctx)`` returns a :class:`StepOutput` whose ``loss`` is a 0-d tensor and whose
  metrics are numbers or one-element tensors; the trainer checks this once, on its dry step
  before the first iteration, and names the method and the hook when it is not so.
- every parameter that requires a gradient gets one from the loss (a distributed run reduces
  gradients with ``find_unused_parameters=False``); the dry step checks this too. Momentum copies
  and frozen tables are parameters with ``requires_grad=False`` or buffers.
- logged metrics are averaged over ranks by the trainer at the log step (the loss too).
- ``ctx.step`` has one meaning everywhere (:class:`TrainContext`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ssl_zoo.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ssl_zoo.data.views import Views, ViewSpec


@dataclass
class StepOutput:
    """One training step's result: the scalar loss to back-propagate and metrics to log."""

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)
    # Tensors worth saving in a debug dump when the loss turns non-finite (e.g. SwAV's scores).
    debug: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Base of every method's typed config; subclasses add documented fields with defaults."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        """Raise :class:`ssl_zoo.errors.ConfigError` for impossible values (e.g. K vs batch)."""


@dataclass
class TrainContext:
    """What the trainer tells hooks: position in the run and access to the training data.

    ``eval_batches()`` yields ``(images, index)`` over the whole training set (this rank's shard
    when distributed) as normalised evaluation views (no randomness), for methods such as PCL
    that look at the dataset between epochs.
    """

    epoch: int = 0
    """The current epoch, from 0 (in ``on_epoch_start``: the epoch about to start)."""
    step: int = 0
    """Iterations (optimiser steps) completed before the current one, one meaning in every
    hook: in ``forward``, ``before_optimizer_step``, ``after_optimizer_step`` and ``on_log`` the
    0-based index of the iteration they belong to (the log record of that iteration has
    ``"step": ctx.step + 1``, the count after it); in ``on_train_start`` and ``on_epoch_start``
    the index of the next iteration to run (0 on a fresh run; a resumed run's position)."""
    steps_per_epoch: int = 1
    total_steps: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    dataset_size: int = 0
    eval_batches: Any = None  # Callable[[], Iterator[tuple[Tensor, Tensor]]]
    log_step: bool = True
    """Whether this iteration's metrics will be logged: a method may skip metrics that cost
    time (histograms, counts) on the other iterations. Outside the trainer always True."""
    step_ok: torch.Tensor | None = None
    """A 0-d bool tensor on the device, set before ``after_optimizer_step``: this step's loss
    and gradients were finite on every rank. When it is False the optimiser skipped the update
    on the device, and a method must take nothing from the step into its state (mask queue
    writes and momentum updates with it). Never read it on the host. None: the step was good."""


class Method(nn.Module):
    """Base class of all methods.

    Subclasses set ``name``, ``description`` and ``Config`` (a :class:`MethodConfig` dataclass),
    implement :meth:`default_views` and :meth:`forward`, and may override the hooks. Extra state
    must be in ``state_dict`` so that a resumed run continues exactly: tensors (queues, cluster
    assignments) as registered buffers, counters the host decides with as Python ints given to
    :func:`ssl_zoo.modules.state.host_counters`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    default_eval_network: ClassVar[str] = "backbone"
    """The key of :meth:`eval_networks` that evaluation and export use unless the run sets
    ``eval.network`` (DINO: its teacher; BYOL: its online network, as its paper)."""
    train_defaults: ClassVar[dict[str, Any]] = {}
    """Trainer settings (``train.*`` field -> value) this method's small-scale defaults need,
    e.g. BYOL's ``{"batch_size": 64}``: they replace the trainer's defaults for this method
    only, and any config file, saved config or ``--set`` still wins."""

    def __init__(self, backbone: nn.Module, feature_dim: int, config: MethodConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.config = config if config is not None else self.Config()

    # --- what every method provides -----------------------------------------------------------
    @classmethod
    def default_views(cls, config: MethodConfig, image_size: int) -> ViewSpec:
        """The crops this method trains on by default, for images of ``image_size`` pixels."""
        raise NotImplementedError

    @classmethod
    def settle_config(cls, config: MethodConfig, spec: ViewSpec) -> None:
        """Fill in, in place, config fields whose default comes from the view spec (null in the
        config: SwAV's ``crops_for_assign``, the spec's global crops), before
        :meth:`check_views`; the effective config (``config.json``) then names them."""

    @classmethod
    def check_views(cls, config: MethodConfig, spec: ViewSpec) -> None:
        """Raise ConfigError if the method cannot train on ``spec`` (e.g. too few crops).

        Roles are settled by then (every group ``global`` or ``local``): a method that needs
        crops of a role checks them with :func:`ssl_zoo.data.views.require_crops` (DINO: 2
        global crops for its teacher) and finds them in ``forward`` with
        ``views.crop_indices("global")``."""

    def forward(self, views: Views, ctx: TrainContext | None = None
                ) -> StepOutput:  # pragma: no cover - abstract
        """One training step's loss from the augmented views (crops in view-spec order).

        ``ctx`` is the trainer's :class:`TrainContext` of this iteration (the trainer passes it
        as the second positional argument, through the DDP wrapper too); ``None`` means a call
        outside the trainer, to be treated as ``TrainContext()`` (step 0, epoch 0, a log step).
        """
        raise NotImplementedError

    def eval_networks(self) -> dict[str, nn.Module]:
        """The networks that can be evaluated and exported, by name (``eval.network``).

        Each maps an image batch (B, C, H, W) to features (B, D) like the backbone; to be
        exported it must have the backbone's architecture (its state_dict keys). Default: the
        backbone alone. A method with a teacher or target network adds it here and names it in
        :attr:`default_eval_network`."""
        return {"backbone": self.backbone}

    def eval_network(self, name: str = "") -> nn.Module:
        """The network ``name`` of :meth:`eval_networks` ("" = :attr:`default_eval_network`);
        a one-line :class:`~ssl_zoo.errors.ConfigError` listing the choices for another name."""
        networks = self.eval_networks()
        key = name or self.default_eval_network
        if key not in networks:
            what = "eval.network" if name else (f"{type(self).__name__}.default_eval_network "
                                                "(not a key of eval_networks())")
            method = self.name or type(self).__name__
            raise ConfigError(f"{what}: {key!r} is not a network of {method} "
                              f"(choices: {', '.join(sorted(networks))})")
        return networks[key]

    # --- shared helpers -----------------------------------------------------------------------
    def encode_views(self, views: Views, encoder: nn.Module | None = None) -> list[torch.Tensor]:
        """Backbone features of every crop, one forward per crop size (docs/design.md, "Data
        flow"): the crops of one size share one batch whatever their group, recipe and role,
        so batch norm normalises them together (as the official BYOL and SimCLR code, which
        concatenate their views).

        Returns a list with one (B, D) tensor per crop, in view-spec order.
        """
        encoder = self.backbone if encoder is None else encoder
        return views.features_in_crop_order([encoder(group) for group in views.groups])

    @torch.no_grad()
    def cluster_assignments(self, images: torch.Tensor) -> torch.Tensor | None:
        """Hard cluster index of each normalised eval-view image, for clustering methods.

        SwAV returns its best prototype, PCL its nearest centroid; the evaluation reports NMI,
        ARI and purity of these and draws a contact sheet. ``None``: the method has no clusters.
        """
        return None

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Named parameters the optimiser updates (momentum copies excluded)."""
        for name, p in self.named_parameters():
            if p.requires_grad:
                yield name, p

    # --- hooks (no-op defaults) ---------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        """Called once before the first step (also after a resume).

        The trainer passes the same :class:`TrainContext` object to every hook and to
        ``forward``, updating its ``epoch`` and ``step`` in place before every iteration: read
        them where they are given rather than keeping a reference.
        """

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """Called at the start of each epoch (PCL clusters the dataset here).

        Not called again when a run resumes in the middle of an epoch: whatever this hook
        computes must live in buffers (``state_dict``) so the resumed run continues exactly.
        """

    def before_optimizer_step(self, ctx: TrainContext) -> None:
        """Called after backward, before the optimiser step (SwAV drops frozen gradients)."""

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """Called after the optimiser step (SwAV re-normalises prototypes and fills its queue;
        MoCo updates its momentum encoder and queue).

        State that takes in the step's data belongs here, not in ``forward``: only here is
        ``ctx.step_ok`` known, and a step with a non-finite loss must leave the state as it was.
        """

    def on_log(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        """Called on log steps with the step's metrics as host numbers (after the trainer's one
        device-to-host transfer; numbers and one-element tensors are means over ranks); a place
        for checks on them, e.g. SwAV's collapse warning. ``ctx.step`` is the logged
        iteration's index (its record says ``ctx.step + 1``)."""

    # --- config helpers -----------------------------------------------------------------------
    @classmethod
    def config_fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls.Config)}
