"""A collapse monitor for methods that assign samples to K clusters or prototypes (SwAV's codes;
any method with a (N, K) code matrix and a loss that sits at ln K when nothing is learned).

:meth:`CollapseMonitor.metrics` turns a step's codes into device tensors (no host read), for the
trainer's one transfer per log step; :meth:`CollapseMonitor.observe` judges the logged host
numbers and warns once per run when a collapse has lasted ``patience_iters`` iterations.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Sequence

import torch

from ssl_zoo.modules import distributed as D


def prototype_usage(codes: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """How many of the (N, K) ``codes``' rows pick each prototype by argmax: (K,) float32,
    counted with ``index_add_`` (a bincount without a device sync); ``weights`` (N,) count
    rows partly or not at all (0: a row that is not a sample)."""
    top = codes.argmax(dim=1)
    ones = torch.ones_like(top, dtype=torch.float32) if weights is None else weights.float()
    return torch.zeros(codes.shape[1], device=codes.device).index_add_(0, top, ones)


class CollapseMonitor:
    """Collapse indicators of a clustering method's codes, and a warning once per run.

    The indicators (device tensors): ``loss_over_lnK`` (a loss at ln K, the cross-entropy of
    uniform predictions, means nothing is learned), ``prototypes_used`` by the hard (argmax)
    codes, ``code_entropy`` (normalised entropy of that usage: 1 even, 0 one prototype) and
    ``code_max`` (mean top code; 1/K when the codes are uniform). With a queue,
    ``prototypes_used_with_queue`` counts the prototypes picked by any row of the assignment
    problems (the queue's embeddings and the batch, of all ranks): the batch alone then uses
    fewer by construction, as the equipartition spreads over batch + queue.

    The entropy of the *mean soft code* would say nothing: Sinkhorn makes it near uniform by
    construction, even when all samples are identical, so usage counts argmaxes. A collapse to
    near-identical embeddings can still spread the argmaxes over all prototypes (tiny
    differences decide them), so the loss at ln K and ``code_max`` near 1/K are the signs to
    watch; the usage count catches a collapse onto one prototype.
    """

    def __init__(self, num_prototypes: int, patience_iters: int, *, method: str,
                 advice: str = "", remedies: Sequence[str] = (),
                 queue_remedies: Sequence[str] = ()):
        if num_prototypes < 2:
            raise ValueError(f"num_prototypes must be >= 2, got {num_prototypes}")
        self.num_prototypes = num_prototypes
        self.ln_k = math.log(num_prototypes)
        self.patience_iters = patience_iters
        self.method = method
        self.advice = advice
        self.remedies = list(remedies)  # what fits this run, for a collapse
        self.queue_remedies = list(queue_remedies)  # for a loss the queue made worse
        self.before_queue: deque[float] = deque(maxlen=3)  # last logged loss / ln K without it
        self.with_queue: deque[float] = deque(maxlen=3)  # and the latest with it
        self.queue_start_step: int | None = None
        self.queue_loss_change: float | None = None  # loss (not / ln K) change, once judged
        self.queue_warned = False
        self.possible_used = num_prototypes  # prototypes the hard codes of a batch can reach
        self.streaks = [0, 0]  # iterations with (loss at ln K, usage <= 2)
        self.last_log_step = 0
        self.warned = False

    def start(self, step: int) -> None:
        """A run (or a resumed run) starts at ``step``: streaks count from here."""
        self.last_log_step = step

    def metrics(self, loss: torch.Tensor, codes: Sequence[torch.Tensor],
                queue_codes: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The indicators of one step, as device tensors, from its ``loss`` (0-d), the codes
        (B, K) of each assigned crop and, for a method with a queue, the codes of this rank's
        queue rows in use (rows of 0 for slots without an embedding; none before the queue is
        used). Distributed, the count with the queue sums over ranks (a collective: every rank
        computes metrics on the same steps)."""
        q = torch.cat(list(codes)).detach()
        self.possible_used = min(self.num_prototypes, codes[0].shape[0])
        counts = prototype_usage(q)
        usage = counts / counts.sum()
        entropy = -(usage * torch.log(usage.clamp_min(1e-30))).sum() / self.ln_k
        out = {"loss_over_lnK": loss.detach() / self.ln_k, "prototypes_used": (counts > 0).sum(),
               "code_entropy": entropy, "code_max": q.max(dim=1).values.mean()}
        if queue_codes is not None:
            queued = [r.detach() for r in queue_codes]
            rows = sum(r.shape[0] for r in queued)
            if rows:
                rows_q = torch.cat(queued)
                counts = counts + prototype_usage(rows_q, weights=rows_q.sum(dim=1) > 0.5)
            self.possible_used = min(self.num_prototypes, codes[0].shape[0] + rows // len(codes))
            out["prototypes_used_with_queue"] = (D.all_reduce_sum(counts.clone()) > 0).sum()
        return out

    def observe(self, step: int, metrics: dict[str, float]) -> None:
        """Judge the logged values at ``step``; rank 0 warns, each warning once per run.

        Collapse: the loss has stayed at ln K, or usage at <= 2 prototypes (over batch + queue
        when there is a queue), for ``patience_iters`` iterations (a streak counts the
        iterations since the first log that saw it). The queue (``queue_in_use`` logged): the
        loss should be lower once the queue is used than before (official SwAV README, "Common
        Issues"); ``patience_iters`` iterations after it came into use, the mean of the last
        three logged losses is compared with the last three before, and a rise is warned about.
        """
        if self.patience_iters <= 0 or "loss_over_lnK" not in metrics:
            return
        since = max(1, step - self.last_log_step)
        self.last_log_step = step
        self._judge_queue(step, metrics)
        if self.warned:
            return
        at_ln_k = abs(metrics["loss_over_lnK"] - 1) < 0.003  # collapsed runs sit at ln K
        used = metrics.get("prototypes_used_with_queue", metrics["prototypes_used"])
        few = used <= 2 and self.possible_used > 4
        self.streaks = [s + since if bad else 0 for s, bad in zip(self.streaks, (at_ln_k, few))]
        loss_streak, usage_streak = self.streaks
        if max(loss_streak, usage_streak) < self.patience_iters:
            return
        self.warned = True
        if D.get_rank() != 0:
            return
        what = (f"the loss has stayed at ln K = {self.ln_k:.3f}"
                if loss_streak >= self.patience_iters else "at most 2 prototypes have been used")
        where = " over batch + queue" if "prototypes_used_with_queue" in metrics else ""
        seen = (f"loss / ln K {metrics['loss_over_lnK']:.3f}, {used:.0f} of "
                f"{self.num_prototypes} prototypes used{where}")
        if "code_entropy" in metrics:
            seen += f", code entropy {metrics['code_entropy']:.2f}"
        fixes = (" The official SwAV README's remedies that fit this run: "
                 + "; ".join(self.remedies) + ".") if self.remedies else ""
        warnings.warn(
            f"{self.method} may have collapsed: {what} for {self.patience_iters} iterations "
            f"({seen}).{fixes}" + (f" {self.advice}" if self.advice else ""),
            RuntimeWarning, stacklevel=3,
        )

    def _judge_queue(self, step: int, metrics: dict[str, float]) -> None:
        if "queue_in_use" not in metrics or self.queue_loss_change is not None:
            return
        ratio = metrics["loss_over_lnK"]
        if metrics["queue_in_use"] < 0.5:
            self.before_queue.append(ratio)
            return
        if self.queue_start_step is None:
            self.queue_start_step = step
        self.with_queue.append(ratio)
        if step - self.queue_start_step < self.patience_iters or not self.before_queue:
            return
        before = sum(self.before_queue) / len(self.before_queue)
        after = sum(self.with_queue) / len(self.with_queue)
        self.queue_loss_change = (after - before) * self.ln_k
        if self.queue_loss_change <= 0:
            return
        self.queue_warned = True
        if D.get_rank() != 0:
            return
        fixes = (" Remedies of the official SwAV README: " + "; ".join(self.queue_remedies)
                 + ".") if self.queue_remedies else ""
        warnings.warn(
            f"{self.method}: the loss is {self.queue_loss_change:.3f} higher "
            f"{step - self.queue_start_step} iterations after the queue came into use (iteration "
            f"{self.queue_start_step}) than before it (mean of the last 3 logs each); with a "
            f"queue it should be lower.{fixes}",
            RuntimeWarning, stacklevel=4,
        )
