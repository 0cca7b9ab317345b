"""Linear probe on frozen, cached features with one fixed recipe.

Recipe (the same for every method and for the random-init baseline):

1. Standardise every feature dimension with the training split's mean and standard deviation.
2. Carve a validation split from train: ``val_fraction`` (10%) of every class, seeded.
3. For each L2 weight decay in ``WEIGHT_DECAYS`` fit multinomial logistic regression (a linear
   layer, softmax cross-entropy averaged over samples, plus ``wd / 2 * ||W||^2``; the bias is not
   decayed) on the remaining 90%, full batch, by L-BFGS with a strong-Wolfe line search from zero
   weights, at most ``max_iter`` iterations; score it on the validation split.
4. Keep the decay with the best validation accuracy (ties: the lower validation cross-entropy),
   refit on all of train with it and report that model's test top-1. The test split is read
   only in this step; there is no early stopping and no "best test epoch".

Full-batch L-BFGS from zero is deterministic (no shuffling, no random init) and needs no learning
rate; the loss and its gradient are written out by hand in a (classes, samples) layout, which
keeps both matrix products long and thin in the fast direction.
"""

from __future__ import annotations

import contextlib

import torch

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.faiss_utils import as_float32_matrix

WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

# The probe's matrix products are thin (classes x D times D x N). Below this many feature entries
# (N * D; 30k x 256 is 7.7M) they run on one thread: measured on 2 busy cores, 30k x 256 took 5 s
# on one thread and 18-41 s on two, whose OpenMP workers spin waiting for each other.
SINGLE_THREAD_BELOW = 1 << 25


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


class LinearClassifier:
    """Weights (C, D) and bias (C,) of a fitted linear classifier on standardised features."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, iterations: int, loss: float):
        self.weight, self.bias, self.iterations, self.loss = weight, bias, iterations, loss

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.to(self.weight.dtype), self.weight.t())

    def cross_entropy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean softmax cross-entropy (no weight decay) on (x, y)."""
        if len(y) == 0:
            return float("nan")
        return float(torch.nn.functional.cross_entropy(self.logits(x).double(), y))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if len(y) == 0:
            return float("nan")
        return float((self.logits(x).argmax(1) == y).double().mean())


def logistic_loss_and_grad(wt: torch.Tensor, b: torch.Tensor, x: torch.Tensor, xt: torch.Tensor,
                           y: torch.Tensor, weight_decay: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean softmax cross-entropy + wd/2 ||W||^2 and its gradients (dW (C, D), db (C,)).

    ``x`` is (N, D) and ``xt`` the same matrix transposed and contiguous (D, N).
    """
    n = x.shape[0]
    zt = torch.addmm(b[:, None], wt, xt)  # (C, N) logits
    lse = torch.logsumexp(zt, dim=0)  # (N,)
    cols = torch.arange(n)
    loss = (lse - zt[y, cols]).mean() + 0.5 * weight_decay * wt.pow(2).sum()
    gt = torch.exp(zt - lse)  # softmax, (C, N)
    gt[y, cols] -= 1.0
    gt /= n
    return loss, torch.addmm(wt, gt, x, beta=weight_decay), gt.sum(1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, *,
                 max_iter: int = 200, dtype: torch.dtype = torch.float32) -> LinearClassifier:
    """Multinomial logistic regression by full-batch L-BFGS from zero weights (deterministic)."""
    x = x.to(dtype).contiguous()
    xt = x.t().contiguous()
    y = y.long()
    wt = torch.zeros(num_classes, x.shape[1], dtype=dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([wt, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6,
                            tolerance_change=1e-9)
    @torch.no_grad()
    def closure():
        loss, gw, gb = logistic_loss_and_grad(wt, b, x, xt, y, weight_decay)
        wt.grad, b.grad = gw, gb
        return loss

    with torch.no_grad(), _threads_for(x.numel()):
        opt.step(closure)
        loss = float(logistic_loss_and_grad(wt, b, x, xt, y, weight_decay)[0])
    iters = int(opt.state[wt].get("n_iter", 0))
    return LinearClassifier(wt.detach().clone(), b.detach().clone(), iters, loss)


def linear_probe(train_feats, train_labels, test_feats, test_labels, *, seed: int = 0,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, val_fraction: float = 0.1,
                 max_iter: int = 200, num_classes: int | None = None) -> dict:
    """Test top-1 of the linear probe whose weight decay won on validation (module doc)."""
    xtr = torch.from_numpy(as_float32_matrix(train_feats, "train features"))
    xte = torch.from_numpy(as_float32_matrix(test_feats, "test features"))
    ytr = torch.as_tensor(train_labels).detach().cpu().long().reshape(-1)
    yte = torch.as_tensor(test_labels).detach().cpu().long().reshape(-1)
    if len(ytr) != len(xtr) or len(yte) != len(xte):
        raise UserError(f"linear probe: {len(ytr)} / {len(yte)} labels for {len(xtr)} / "
                        f"{len(xte)} train / test features")
    if len(xtr) < 2 or len(xte) < 1:
        raise UserError("linear probe needs at least 2 training and 1 test features")
    if xtr.shape[1] != xte.shape[1]:
        raise UserError(f"train features have {xtr.shape[1]} dimensions, test {xte.shape[1]}")
    if not weight_decays:
        raise UserError("linear probe needs at least one weight decay to try")
    if num_classes is None:
        num_classes = int(max(ytr.max(), yte.max())) + 1
    if int(min(ytr.min(), yte.min())) < 0 or int(max(ytr.max(), yte.max())) >= num_classes:
        raise UserError(f"linear probe labels must lie in [0, {num_classes})")

    mean = xtr.double().mean(0)
    std = xtr.double().std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant dimensions stay 0
    xtr = ((xtr.double() - mean) / std).float()
    xte = ((xte.double() - mean) / std).float()

    fit_idx, val_idx = stratified_split(ytr, val_fraction, seed)
    sweep: dict[float, float] = {}
    sweep_loss: dict[float, float] = {}
    if len(val_idx) > 0 and len(weight_decays) > 1:
        for wd in weight_decays:
            clf = fit_logistic(xtr[fit_idx], ytr[fit_idx], num_classes, wd, max_iter=max_iter)
            sweep[wd] = clf.accuracy(xtr[val_idx], ytr[val_idx])
            sweep_loss[wd] = clf.cross_entropy(xtr[val_idx], ytr[val_idx])
        # ties in accuracy (common on small validation splits): the lower validation loss
        best = max(sweep, key=lambda wd: (sweep[wd], -sweep_loss[wd]))
    else:  # nothing to choose or nothing to choose on
        best = sorted(weight_decays)[len(weight_decays) // 2]
    final = fit_logistic(xtr, ytr, num_classes, best, max_iter=max_iter)
    return {
        "test_top1": final.accuracy(xte, yte),
        "val_top1": sweep.get(best),
        "train_top1": final.accuracy(xtr, ytr),
        "weight_decay": best,
        "sweep_val_top1": {repr(wd): acc for wd, acc in sweep.items()},
        "sweep_val_loss": {repr(wd): loss for wd, loss in sweep_loss.items()},
        "lbfgs_iterations": final.iterations,
        "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)),
        "recipe": (f"features standardised with train statistics; multinomial logistic "
                   f"regression (mean cross-entropy + wd/2 ||W||^2), full-batch L-BFGS from "
                   f"zero, <= {max_iter} iterations; wd chosen among {list(weight_decays)} "
                   f"by accuracy (ties: cross-entropy) on a stratified {val_fraction:.0%} "
                   f"validation split of train "
                   f"(seed {seed}); refit on all train; test top-1 of that final model"),
    }
