"""Sinkhorn-Knopp with equipartition (SwAV Sec. 3.1, App. A.1; SeLa, Asano et al. 2020, Sec. 3),
one function shared by the methods that split samples equally among prototypes: SwAV on each
batch (plus its queue), SeLa-v2 on the whole training set at every epoch start."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ssl_zoo.modules import distributed as D


def _all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all ranks, in place (identity in one process)."""
    if D.is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _log_sum_over_samples(log_q: torch.Tensor) -> torch.Tensor:
    """``log sum_b exp(log_q[b, k])`` over the rows of every rank: (1, K), same on all ranks.

    The shift is each prototype's maximum over all samples of all ranks (all-reduce MAX), so the
    largest term is exactly 1 and the sum can neither overflow nor vanish.
    """
    shift = _all_reduce_max_(log_q.max(dim=0, keepdim=True).values)
    total = D.all_reduce_sum(torch.exp(log_q - shift).sum(dim=0, keepdim=True))
    return shift + torch.log(total)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
             use_float64: bool = False, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft codes (B, K), rows summing to 1, from scores (B, K) by Sinkhorn-Knopp with
    equipartition of the batch among the K prototypes (SwAV Sec. 3.1 Eq. 3, App. A.1 Alg. 1).

    Q = exp(scores / epsilon) is alternately rescaled ``iterations`` times so that every
    prototype gets total mass 1/K over the batch and every sample mass 1/B; the returned codes are
    B Q (the per-sample step comes last, so rows sum to 1 exactly up to rounding).

    Computed in float32 (float64 with ``use_float64``) with autocast off, whatever the dtype of
    ``scores``, and in the log domain: each normalisation subtracts a log-sum-exp, itself shifted
    by a maximum. This is the same iteration as the paper's pseudo-code; a global max subtraction
    would be exact too, but a per-prototype max is as exact (a per-prototype factor is absorbed
    by the per-prototype normalisation) and, unlike a multiplicative iteration, the log domain
    cannot underflow at small ``epsilon``.

    ``valid`` (B,) bool, on the device: only these rows take part (B counts them); the others
    get codes of 0. The same codes as Sinkhorn on the valid rows alone, with no data-dependent
    shape (SwAV's queue slots that hold no embedding yet).

    Distributed: the per-prototype sums (and their shifts: all-reduce MAX) run over the rows of
    all ranks, the per-sample sums stay local, and B is the sum of the ranks' row counts, so
    ranks holding parts of a batch get exactly the codes of one process holding all of it.
    Without a process group it runs alone.
    """
    if scores.ndim != 2:
        raise ValueError(f"expected scores of shape (B, K), got {tuple(scores.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype = torch.float64 if use_float64 else torch.float32
    with torch.autocast(scores.device.type, enabled=False):
        log_q = scores.detach().to(dtype) / epsilon
        left_out = None
        if valid is not None:  # rows left out hold log 0 = -inf: no mass in any sum
            if valid.shape != log_q.shape[:1]:
                raise ValueError(f"valid {tuple(valid.shape)} does not fit scores "
                                 f"{tuple(log_q.shape)}")
            left_out = ~valid.reshape(-1, 1)
            log_q = log_q.masked_fill(left_out, -math.inf)
            n_rows = D.all_reduce_sum(valid.sum().to(torch.float64))  # global B: valid rows
            log_n = torch.log(n_rows).to(dtype)
        elif D.is_distributed():  # global B: the sum of the ranks' rows
            n_rows = torch.full((), float(log_q.shape[0]), dtype=dtype, device=log_q.device)
            log_n = torch.log(D.all_reduce_sum(n_rows))
        else:
            log_n = math.log(log_q.shape[0])
        log_k = math.log(log_q.shape[1])
        for _ in range(iterations):
            log_q = log_q - (_log_sum_over_samples(log_q) + log_k)  # each prototype: 1/K
            per_sample = torch.logsumexp(log_q, dim=1, keepdim=True)
            if left_out is not None:  # -inf rows stay -inf (not -inf - -inf = nan)
                per_sample = per_sample.masked_fill(left_out, 0.0)
            log_q = log_q - (per_sample + log_n)  # each sample: 1/B
        return torch.exp(log_q + log_n)
