"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of InstDisc (Wu et al. 2018, Sec. 3.4), used since by DINO, solo-learn and lightly:
features and memory bank are L2-normalised, the k most cosine-similar training features of a query
vote for their labels with weight exp(sim / T), and the class with the largest summed vote wins.
``temperature=None`` gives every neighbour weight 1 (scikit-learn's ``weights="uniform"``).

Ties: the top-1 prediction is the smallest class index among equal scores (as scikit-learn's
uniform vote). Top-5 counts a hit only for classes that received a vote (public implementations
also count zero-vote classes, in index order, which inflates top-5 when fewer than 5 classes are
voted for; we deviate on purpose).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.faiss_utils import FlatIPIndex, as_float32_matrix

# name -> (k, temperature): DINO / solo-learn use k=20, T=0.07; InstDisc / lightly k=200, T=0.1
KNN_PROTOCOLS: dict[str, tuple[int, float]] = {"k20_t0.07": (20, 0.07), "k200_t0.1": (200, 0.1)}


def _unit_rows(x, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm in float32 (a zero row stays zero)."""
    t = torch.from_numpy(as_float32_matrix(x, name))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _labels(y, n: int, num_classes: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y).detach().cpu().long().reshape(-1)
    if y.numel() != n:
        raise UserError(f"{name}: {y.numel()} labels for {n} feature rows")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserError(f"{name} must lie in [0, {num_classes}), got range "
                        f"[{int(y.min())}, {int(y.max())}]")
    return y


def clamp_k(k: int, n_train: int) -> int:
    """``k`` limited to the size of the memory bank, with a warning when that changes it."""
    if k < 1:
        raise UserError(f"kNN needs k >= 1, got {k}")
    if k > n_train:
        warnings.warn(f"kNN k={k} is larger than the {n_train} training features; using "
                      f"k={n_train}", stacklevel=3)
        return n_train
    return k


def _check(temperatures, chunk_size: int) -> None:
    for t in temperatures:
        if t is not None and not t > 0:
            raise UserError(f"kNN temperature must be positive (or None for uniform votes), "
                            f"got {t}")
    if chunk_size < 1:
        raise UserError(f"chunk_size must be positive, got {chunk_size}")


def vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float | None,
         num_classes: int) -> torch.Tensor:
    """Class scores (Q, C): per class, the sum of exp(sim / T) (or 1) over the given neighbours."""
    _check([temperature], 1)
    if temperature is None:
        weights = torch.ones_like(sims, dtype=torch.float64)
    else:  # exp((s - 1) / T) * exp(1 / T): shifting by the largest possible cosine avoids overflow
        weights = torch.exp((sims.double() - 1.0) / temperature)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype)
    scores.scatter_add_(1, neighbour_labels, weights)
    return scores


def _neighbours(train_feats, train_labels, test_feats, k: int, num_classes: int | None,
                chunk_size: int, gpu: bool | None, test_labels=None):
    """The one neighbour search of every kNN result here: L2-normalised features, one faiss
    inner-product index, k clamped to the training set. Returns (k, num_classes, test labels
    or None, iterator of (first query, cosines (q, k), neighbour labels (q, k)) per chunk)."""
    tr = _unit_rows(train_feats, "train features")
    index = FlatIPIndex(tr, gpu=gpu)
    te = _unit_rows(test_feats, "test features")
    ytr_raw = torch.as_tensor(train_labels).detach().cpu().long().reshape(-1)
    yte = None
    if num_classes is None:  # classes seen in either split
        seen = [ytr_raw] + ([torch.as_tensor(test_labels).long().reshape(-1)]
                            if test_labels is not None else [])
        num_classes = int(torch.cat(seen).max()) + 1
    ytr = _labels(ytr_raw, tr.shape[0], num_classes, "train labels")
    if test_labels is not None:
        yte = _labels(torch.as_tensor(test_labels).detach().cpu().long().reshape(-1),
                      te.shape[0], num_classes, "test labels")
    k = clamp_k(k, tr.shape[0])

    def chunks():
        for start in range(0, te.shape[0], chunk_size):
            sims, idx = index.search(te[start:start + chunk_size].numpy(), k)
            yield start, torch.from_numpy(sims), ytr[torch.from_numpy(idx)]

    return k, num_classes, yte, te.shape[0], chunks()


def knn_classify(train_feats, train_labels, test_feats, k: int, temperature: float | None,
                 num_classes: int, *, chunk_size: int = 8192, gpu: bool | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted kNN (InstDisc Sec. 3.4): (class scores float64 (Q, C), predictions int64 (Q,)).

    Scores are the summed votes divided by exp(1 / T), i.e. each vote is exp((sim - 1) / T) so
    large 1/T cannot overflow; the ranking is that of exp(sim / T). ``k`` larger than the
    training set is clamped to it, with a warning.
    """
    _check([temperature], chunk_size)
    k, num_classes, _, _, chunks = _neighbours(train_feats, train_labels, test_feats, k,
                                               num_classes, chunk_size, gpu)
    out = [vote(sims, nlab, temperature, num_classes) for _, sims, nlab in chunks]
    scores = torch.cat(out) if out else torch.zeros(0, num_classes, dtype=torch.float64)
    return scores, scores.argmax(1) if scores.shape[0] else torch.empty(0, dtype=torch.long)


def _hits(scores: torch.Tensor, neighbour_labels: torch.Tensor, y: torch.Tensor,
          topk: int = 5) -> tuple[int, int]:
    """(# queries whose label is the top-1 class, # whose label is among the ``topk`` best
    classes that received at least one vote)."""
    top1 = int((scores.argmax(1) == y).sum())
    voted = torch.zeros(scores.shape, dtype=torch.bool).scatter_(1, neighbour_labels, True)
    best = scores.topk(min(topk, scores.shape[1]), dim=1).indices
    hit = (best == y[:, None]) & voted.gather(1, best)
    return top1, int(hit.any(1).sum())


def knn_protocols(train_feats, train_labels, test_feats, test_labels, *,
                  protocols: Mapping[str, tuple[int, float | None]] = KNN_PROTOCOLS,
                  num_classes: int | None = None, chunk_size: int = 8192,
                  gpu: bool | None = None) -> dict[str, dict]:
    """Top-1 / top-5 accuracy under several (k, T) protocols from one neighbour search.

    Returns ``{name: {"top1", "top5", "k", "temperature"}}``; a protocol whose k had to be
    clamped to the training-set size also carries ``"k_requested"`` and a ``"note"``. The search
    runs once with the largest k; smaller k use its best-first prefix.
    """
    if not protocols:
        raise UserError("no kNN protocol to evaluate")
    _check([t for _, t in protocols.values()], chunk_size)
    if len(test_feats) == 0:
        raise UserError("kNN accuracy needs at least one test feature")
    n_train = len(train_feats)
    ks = {name: clamp_k(k, n_train) for name, (k, _) in protocols.items()}
    k_max, num_classes, yte, n_test, chunks = _neighbours(
        train_feats, train_labels, test_feats, max(ks.values()), num_classes, chunk_size, gpu,
        test_labels=test_labels)
    hits = {name: [0, 0] for name in protocols}
    for start, sims, nlab in chunks:
        y = yte[start:start + sims.shape[0]]
        for name, (_, temperature) in protocols.items():
            k = ks[name]
            scores = vote(sims[:, :k], nlab[:, :k], temperature, num_classes)
            h1, h5 = _hits(scores, nlab[:, :k], y)
            hits[name][0] += h1
            hits[name][1] += h5
    out = {}
    for name, (k_req, temperature) in protocols.items():
        res = {"top1": hits[name][0] / n_test, "top5": hits[name][1] / n_test,
               "k": ks[name], "temperature": temperature}
        if ks[name] != k_req:
            res["k_requested"] = k_req
            res["note"] = (f"k={k_req} clamped to the {n_train} training features")
        out[name] = res
    return out
