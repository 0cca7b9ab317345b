"""Linear probe on frozen features with one fixed recipe.

Recipe: features standardised with the training split's mean and std; a stratified 10%
validation split carved from train (seeded); multinomial logistic regression (a linear layer,
softmax cross-entropy) trained full-batch with L-BFGS (strong Wolfe line search, at most
``max_iter`` iterations) for each L2 weight decay of a small sweep; the decay with the best
validation accuracy is retrained on all of train and its test accuracy reported. The test split
is never looked at before that last step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) with ~``fraction`` of every class in validation."""
    g = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200, seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression fitted by full-batch L-BFGS (float64, deterministic)."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], num_classes).double()
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20)
    xd, yd = x.double(), y.long()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(xd), yd) + 0.5 * weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer


def _accuracy(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((layer(x.double()).argmax(1) == y).float().mean())


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor,
                 test_feats: torch.Tensor, test_labels: torch.Tensor, *, seed: int = 0,
                 weight_decays=WEIGHT_DECAYS, val_fraction: float = 0.1,
                 max_iter: int = 200) -> dict:
    """Test top-1 of the probe whose weight decay won on validation (see the module doc)."""
    ytr, yte = train_labels.long().cpu(), test_labels.long().cpu()
    mean = train_feats.float().mean(0, keepdim=True)
    std = train_feats.float().std(0, keepdim=True).clamp_min(1e-6)
    xtr = (train_feats.float().cpu() - mean) / std
    xte = (test_feats.float().cpu() - mean) / std
    num_classes = int(max(ytr.max(), yte.max())) + 1
    fit_idx, val_idx = stratified_split(ytr, val_fraction, seed)
    sweep = {}
    for wd in weight_decays:
        layer = fit_logistic(xtr[fit_idx], ytr[fit_idx], num_classes, wd, max_iter, seed)
        sweep[wd] = _accuracy(layer, xtr[val_idx], ytr[val_idx])
    best = max(sweep, key=lambda wd: (sweep[wd], -wd))  # ties: the smaller decay
    final = fit_logistic(xtr, ytr, num_classes, best, max_iter, seed)
    return {
        "test_top1": _accuracy(final, xte, yte),
        "val_top1": sweep[best],
        "weight_decay": best,
        "sweep_val_top1": {str(k): v for k, v in sweep.items()},
        "recipe": (f"standardised features; multinomial logistic regression by full-batch "
                   f"L-BFGS (<= {max_iter} it.); L2 decay chosen among {list(weight_decays)} "
                   f"on a stratified {val_fraction:.0%} validation split of train; retrained "
                   f"on all train; test accuracy of that final model"),
    }
