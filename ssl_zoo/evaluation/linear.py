"""The feature probe: a linear classifier on frozen features, by mini-batch optimisation.

Recipe (the same for every method and for the random-init baseline):

1. Standardise every feature dimension with the training split's mean and standard deviation
   (computed in float64 over chunks of rows; each batch is standardised as it is read, so no
   standardised copy of the features is made).
2. Carve a validation split from train: ``val_fraction`` (10%) of every class, seeded.
3. For each L2 weight decay in ``WEIGHT_DECAYS`` fit multinomial logistic regression (a linear
   layer, softmax cross-entropy averaged over samples, plus ``wd / 2 * ||W||^2``; the bias is not
   decayed) on the remaining 90%, from zero weights, by Adam with a cosine learning rate decay
   to zero, for ``epochs`` passes (at least ``min_steps`` steps) in seeded shuffled batches.
   All the decays are fitted at once: one read of each batch updates every classifier.
4. Keep the decay with the best validation accuracy (ties: the lower validation cross-entropy),
   refit on all of train with it (same schedule) and report that model's test top-1. The test
   split is read only in this step; there is no early stopping and no "best test epoch".

Memory beyond the features: the classifiers and Adam's moments (3 x decays x D x classes), one
batch (batch x D) and its logits (decays x classes x batch), one chunk of rows for the
statistics, and O(N) integers for labels and the shuffled order. The features themselves are any
(N, D) float tensor or numpy array, including a ``numpy.memmap`` of a file larger than memory:
rows are gathered batch by batch (a memmap is shuffled by blocks of contiguous rows, so reads
stay local), converted to float32 on the device, standardised and dropped. On a CUDA device
features that fit (in float32, or else float16) are copied there once.

This replaces a full-batch float64 L-BFGS fit (exact on small data, but holding float64 copies
of the whole matrix): at the decays that win on validation both reach the same optimum (the
tests check it against scikit-learn), and at the smallest decays, where L-BFGS would need many
more iterations too, the fixed budget acts as early stopping.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ssl_zoo.errors import UserError

WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
EPOCHS = 30
"""Passes over the training features per fit (the default of ``eval.linear_epochs``)."""
BATCH_SIZE = 1024
LR_SQRT_DIM = 0.17
"""Adam's peak learning rate is this over sqrt(D): standardised features make one value fit every
backbone; an Adam step moves a logit by about lr x ||x||_1, and the 1/sqrt(D) scaling (between
constant and 1/D) converged best at D = 32, 256 and 2048 in our checks against scikit-learn."""
MIN_STEPS = 1000
"""Small data gets more epochs, so that every fit has at least this many steps."""

# Below this many feature entries (N * D; 30k x 256 is 7.7M) the probe runs on one thread:
# measured on 2 busy cores, thin matrix products ran 3-8x slower on two threads, whose OpenMP
# workers spin waiting for each other.
SINGLE_THREAD_BELOW = 1 << 25
STATS_CHUNK_BYTES = 64 << 20
"""Rows read at once (as float64) for the statistics and the evaluation passes."""
MEMMAP_BLOCK_BYTES = 16 << 20
"""A memory-mapped matrix is shuffled by blocks of this many bytes of contiguous rows."""
MEMMAP_WINDOW_BLOCKS = 16
"""... and the rows of this many shuffled blocks are shuffled together."""


@contextlib.contextmanager
def _threads_for(n_entries: int):
    before = torch.get_num_threads()
    if n_entries < SINGLE_THREAD_BELOW and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, validation indices), sorted: ``round(fraction * n_c)`` of each class c goes
    to validation (none from a class with a single sample), chosen by a seeded permutation."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"validation fraction must be in [0, 1), got {fraction}")
    labels = torch.as_tensor(labels).long().reshape(-1)
    g = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in labels.unique():  # sorted, so the draw order is fixed
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    empty = torch.empty(0, dtype=torch.long)
    return (torch.cat(fit).sort().values if fit else empty,
            torch.cat(val).sort().values if val else empty)


class Features:
    """An (N, D) float matrix (tensor, array or memmap) read by rows as float32 on ``device``."""

    def __init__(self, x, device: torch.device, name: str):
        if isinstance(x, torch.Tensor):
            data = x.detach()
        elif isinstance(x, np.ndarray):
            data = x
        else:
            try:
                data = np.asarray(x)
            except (TypeError, ValueError) as exc:
                raise UserError(f"{name}: expected an (N, D) float matrix ({exc})") from None
        floating = (data.is_floating_point() if isinstance(data, torch.Tensor)
                    else np.issubdtype(data.dtype, np.floating))
        if data.ndim != 2 or not floating:
            raise UserError(f"{name}: expected an (N, D) float matrix, got shape "
                            f"{tuple(data.shape)} of {data.dtype}")
        self.name, self.device = name, device
        self.n, self.dim = int(data.shape[0]), int(data.shape[1])
        self.memmap = isinstance(data, np.memmap)
        if device.type == "cuda" and not self.memmap:  # pragma: no cover - needs a GPU
            free = torch.cuda.mem_get_info(device)[0]
            for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
                if self.n * self.dim * size < 0.5 * free:
                    data = torch.as_tensor(data).to(device, dtype)
                    break
        self.data = data

    def rows(self, idx: np.ndarray | slice) -> torch.Tensor:
        """Rows ``idx`` (sorted indices or a slice) as float32 on the device."""
        if isinstance(self.data, torch.Tensor):
            part = self.data[idx] if isinstance(idx, slice) else self.data[
                torch.from_numpy(idx).to(self.data.device)]
        else:
            part = torch.from_numpy(np.array(self.data[idx]))  # a copy: a memmap may be read-only
        return part.to(self.device, torch.float32, non_blocking=True)

    def chunk_rows(self) -> int:
        return max(1, STATS_CHUNK_BYTES // (8 * max(self.dim, 1)))

    def shuffled(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``rows`` in a seeded random order (local to blocks of a memmap; module doc)."""
        if not self.memmap:
            return rng.permutation(rows)
        block = max(1, MEMMAP_BLOCK_BYTES // (self.dim * self.data.dtype.itemsize))
        starts = np.arange(0, len(rows), block)
        order = rng.permutation(len(starts))
        out = []
        for w in range(0, len(order), MEMMAP_WINDOW_BLOCKS):
            sel = np.concatenate([rows[starts[b]:starts[b] + block]
                                  for b in order[w:w + MEMMAP_WINDOW_BLOCKS]])
            out.append(rng.permutation(sel))
        return np.concatenate(out) if out else rows[:0]


@torch.no_grad()
def feature_statistics(feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (unbiased; 1 for constant dimensions) on the
    device, merged chunk by chunk in float64 (Chan et al.'s pairwise update); refuses NaN/inf."""
    n = 0
    mean = torch.zeros(feats.dim, dtype=torch.float64, device=feats.device)
    m2 = torch.zeros_like(mean)
    step = feats.chunk_rows()
    for s in range(0, feats.n, step):
        c = feats.rows(slice(s, s + step)).double()
        if not bool(torch.isfinite(c).all()):
            raise UserError(f"{feats.name} contain NaN or infinite values")
        nc = c.shape[0]
        mc = c.mean(0)
        m2c = (c - mc).pow(2).sum(0)
        delta = mc - mean
        total = n + nc
        mean += delta * (nc / total)
        m2 += m2c + delta.pow(2) * (n * nc / total)
        n = total
    std = (m2 / max(n - 1, 1)).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant dimensions stay 0
    return mean.float(), std.float()


def softmax_ce_and_grads(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         weight_decays: torch.Tensor, with_loss: bool = False
                         ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """For K stacked classifiers (w (K, C, D), b (K, C)) on one batch (x (B, D), y (B,)): each
    one's mean softmax cross-entropy + wd_k/2 ||W_k||^2 (if ``with_loss``) and its gradients."""
    k, c, d = w.shape
    n = x.shape[0]
    z = torch.mm(w.reshape(k * c, d), x.t()).reshape(k, c, n) + b[:, :, None]
    lse = torch.logsumexp(z, dim=1)  # (K, B)
    cols = torch.arange(n, device=x.device)
    loss = None
    if with_loss:
        loss = (lse - z[:, y, cols]).mean(1) + 0.5 * weight_decays * w.pow(2).sum((1, 2))
    g = torch.exp(z - lse[:, None, :])  # softmax over classes
    g[:, y, cols] -= 1.0
    g /= n
    gw = torch.mm(g.reshape(k * c, n), x).reshape(k, c, d)
    gw += weight_decays[:, None, None] * w
    return loss, gw, g.sum(2)


def _progress(console, total: int, description: str):
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("steps"), TimeRemainingColumn(), console=console, transient=True)
    return bar, bar.add_task(description, total=total)


def schedule(epochs: int, n_rows: int, batch_size: int, min_steps: int) -> tuple[int, int]:
    """(epochs, total steps) of one fit: ``epochs`` passes, more if that is under min_steps."""
    per_epoch = math.ceil(n_rows / batch_size)
    epochs = max(epochs, math.ceil(min_steps / per_epoch)) if per_epoch else 0
    return epochs, epochs * per_epoch


@torch.no_grad()
def fit_probe(feats: Features, labels: torch.Tensor, rows: np.ndarray, num_classes: int,
              weight_decays, *, mean: torch.Tensor, std: torch.Tensor, epochs: int = EPOCHS,
              batch_size: int = BATCH_SIZE, lr: float | None = None, min_steps: int = MIN_STEPS,
              seed: int = 0, progress=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One classifier per weight decay on rows ``rows`` (module doc, step 3): (W (K, C, D),
    b (K, C), steps). ``labels`` holds every row's class on the device."""
    dev = feats.device
    wds = torch.tensor(list(weight_decays), dtype=torch.float32, device=dev)
    w = torch.zeros(len(wds), num_classes, feats.dim, device=dev, requires_grad=True)
    b = torch.zeros(len(wds), num_classes, device=dev, requires_grad=True)
    lr = lr or LR_SQRT_DIM / math.sqrt(max(feats.dim, 1))
    opt = torch.optim.Adam([w, b], lr=lr)
    epochs, total = schedule(epochs, len(rows), batch_size, min_steps)
    rng = np.random.default_rng(seed)
    step = 0
    for _ in range(epochs):
        order = feats.shuffled(rows, rng)
        for s in range(0, len(order), batch_size):
            idx = np.sort(order[s:s + batch_size])
            x = (feats.rows(idx) - mean) / std
            _, gw, gb = softmax_ce_and_grads(w, b, x, labels[torch.from_numpy(idx).to(dev)],
                                             wds)
            w.grad, b.grad = gw, gb
            opt.param_groups[0]["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            opt.step()
            step += 1
            if progress is not None:
                progress()
    return w.detach(), b.detach(), step


@torch.no_grad()
def score(feats: Features, labels: torch.Tensor, rows: np.ndarray, w: torch.Tensor,
          b: torch.Tensor, *, mean: torch.Tensor, std: torch.Tensor
          ) -> tuple[list[float], list[float]]:
    """(top-1, mean cross-entropy) of each stacked classifier on rows ``rows``, in chunks."""
    k = w.shape[0]
    correct = torch.zeros(k, dtype=torch.float64, device=feats.device)
    ce = torch.zeros(k, dtype=torch.float64, device=feats.device)
    step = max(1, min(feats.chunk_rows(), STATS_CHUNK_BYTES // (4 * k * w.shape[1])))
    for s in range(0, len(rows), step):
        idx = rows[s:s + step]
        x = feats.rows(idx)
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"{feats.name} contain NaN or infinite values")
        x = (x - mean) / std
        y = labels[torch.from_numpy(idx).to(feats.device)]
        z = torch.einsum("kcd,nd->knc", w, x) + b[:, None, :]
        correct += (z.argmax(2) == y).sum(1)
        cols = torch.arange(len(idx), device=feats.device)
        ce += (torch.logsumexp(z, 2) - z[:, cols, y]).double().sum(1)
    if len(rows) == 0:
        return [float("nan")] * k, [float("nan")] * k
    return (correct / len(rows)).tolist(), (ce / len(rows)).tolist()


def _labels(y) -> torch.Tensor:
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    return y.detach().cpu().long().reshape(-1)


def linear_probe(train_feats, train_labels, test_feats, test_labels, *, seed: int = 0,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, val_fraction: float = 0.1,
                 epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float | None = None,
                 min_steps: int = MIN_STEPS, num_classes: int | None = None,
                 device: torch.device | str | None = None, console=None) -> dict:
    """Test top-1 of the probe whose weight decay won on validation (module doc).

    Features: (N, D) float tensors or numpy arrays (a ``numpy.memmap`` is streamed). ``console``
    gets a progress bar (steps of every fit)."""
    device = torch.device(device or "cpu")
    tr = Features(train_feats, device, "train features")
    te = Features(test_feats, device, "test features")
    ytr = _labels(train_labels)
    yte = _labels(test_labels)
    lr, num_classes = _check_probe_inputs(tr, te, ytr, yte, weight_decays, epochs, batch_size,
                                          lr, num_classes)
    with _threads_for(tr.n * tr.dim):
        mean, std = feature_statistics(tr)
        fit_idx, val_idx = stratified_split(ytr, val_fraction, seed)
        fit_rows, val_rows = fit_idx.numpy(), val_idx.numpy()
        all_rows = np.arange(tr.n)
        sweeping = len(val_rows) > 0 and len(weight_decays) > 1
        total = schedule(epochs, tr.n, batch_size, min_steps)[1]
        if sweeping:
            total += schedule(epochs, len(fit_rows), batch_size, min_steps)[1]
        bar, task = _progress(console, total, "linear probe") if console is not None else (
            None, None)
        kw = dict(mean=mean, std=std, epochs=epochs, batch_size=batch_size, lr=lr,
                  min_steps=min_steps, seed=seed,
                  progress=(lambda: bar.advance(task)) if bar is not None else None)
        ytr_dev, yte_dev = ytr.to(device), yte.to(device)
        with bar or contextlib.nullcontext():
            if sweeping:
                best, sweep, sweep_loss = _sweep_weight_decay(
                    tr, ytr_dev, fit_rows, val_rows, num_classes, weight_decays, kw)
            else:  # nothing to choose or nothing to choose on
                best, sweep, sweep_loss = sorted(weight_decays)[len(weight_decays) // 2], {}, {}
            w, b, steps = fit_probe(tr, ytr_dev, all_rows, num_classes, (best,), **kw)
        test_top1 = score(te, yte_dev, np.arange(te.n), w, b, mean=mean, std=std)[0][0]
        train_top1 = score(tr, ytr_dev, all_rows, w, b, mean=mean, std=std)[0][0]
    return {
        "test_top1": test_top1,
        "val_top1": sweep.get(best),
        "train_top1": train_top1,
        "weight_decay": best,
        "sweep_val_top1": {repr(wd): acc for wd, acc in sweep.items()},
        "sweep_val_loss": {repr(wd): loss for wd, loss in sweep_loss.items()},
        "steps": steps, "epochs": schedule(epochs, tr.n, batch_size, min_steps)[0],
        "batch_size": batch_size, "lr": lr,
        "n_fit": int(len(fit_rows)), "n_val": int(len(val_rows)),
        "recipe": _recipe(lr, batch_size, epochs, min_steps, weight_decays, val_fraction, seed),
    }


def _check_probe_inputs(tr: Features, te: Features, ytr: torch.Tensor, yte: torch.Tensor,
                        weight_decays: tuple[float, ...], epochs: int, batch_size: int,
                        lr: float | None, num_classes: int | None) -> tuple[float, int]:
    """One-line errors for inputs the probe cannot take; the learning rate (default
    ``LR_SQRT_DIM / sqrt(D)``) and the number of classes (default: from the labels)."""
    if len(ytr) != tr.n or len(yte) != te.n:
        raise UserError(f"linear probe: {len(ytr)} / {len(yte)} labels for {tr.n} / "
                        f"{te.n} train / test features")
    if tr.n < 2 or te.n < 1:
        raise UserError("linear probe needs at least 2 training and 1 test features")
    if tr.dim != te.dim:
        raise UserError(f"train features have {tr.dim} dimensions, test {te.dim}")
    if not weight_decays:
        raise UserError("linear probe needs at least one weight decay to try")
    lr = lr or LR_SQRT_DIM / math.sqrt(max(tr.dim, 1))
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"linear probe: epochs ({epochs}) and batch size ({batch_size}) must be "
                        f">= 1 and the learning rate ({lr}) > 0")
    if num_classes is None:
        num_classes = int(max(ytr.max(), yte.max())) + 1
    if int(min(ytr.min(), yte.min())) < 0 or int(max(ytr.max(), yte.max())) >= num_classes:
        raise UserError(f"linear probe labels must lie in [0, {num_classes})")
    return lr, num_classes


def _sweep_weight_decay(tr: Features, ytr: torch.Tensor, fit_rows: np.ndarray,
                        val_rows: np.ndarray, num_classes: int,
                        weight_decays: tuple[float, ...], kw: dict[str, Any]
                        ) -> tuple[float, dict[float, float], dict[float, float]]:
    """Fit one probe per weight decay on ``fit_rows`` (``kw``: ``fit_probe``'s settings) and
    score them on ``val_rows``: (the winner, validation top-1 and loss per weight decay)."""
    w, b, _ = fit_probe(tr, ytr, fit_rows, num_classes, weight_decays, **kw)
    accs, losses = score(tr, ytr, val_rows, w, b, mean=kw["mean"], std=kw["std"])
    sweep = dict(zip(weight_decays, accs))
    sweep_loss = dict(zip(weight_decays, losses))
    # ties in accuracy (common on small validation splits): the lower validation loss
    best = max(weight_decays, key=lambda wd: (sweep[wd], -sweep_loss[wd]))
    return best, sweep, sweep_loss


def _recipe(lr: float, batch_size: int, epochs: int, min_steps: int,
            weight_decays: tuple[float, ...], val_fraction: float, seed: int) -> str:
    """The probe's protocol in one sentence (saved with every result)."""
    return (f"features standardised with train statistics; multinomial logistic "
            f"regression (mean cross-entropy + wd/2 ||W||^2) from zero, Adam lr {lr:.3g} "
            f"with cosine decay, batch {batch_size}, {epochs} epochs (at least "
            f"{min_steps} steps); wd chosen among {list(weight_decays)} by accuracy "
            f"(ties: cross-entropy) on a stratified {val_fraction:.0%} validation split "
            f"of train (seed {seed}); refit on all train; test top-1 of that final model")
