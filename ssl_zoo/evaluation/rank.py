"""Effective rank of a feature matrix: RankMe (Garrido et al. 2023, "RankMe: Assessing the
downstream performance of pretrained self-supervised representations by their rank", Eq. 1)."""

from __future__ import annotations

import numpy as np
import torch

from ssl_zoo.errors import UserError

EPS = 1e-7
"""The paper's epsilon, added to each normalised singular value before the entropy."""
CHUNK_ROWS = 8192


@torch.no_grad()
def singular_values(features, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Singular values (descending, float64) of the (N, D) matrix, from its D x D Gram matrix
    accumulated in float64 over chunks of rows, so memory is O(D^2) whatever N is."""
    x = features  # a tensor, an array or a memmap (read by chunks)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise UserError(f"effective rank: expected a non-empty (N, D) matrix, got "
                        f"{tuple(x.shape)}")
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=device)
    for s in range(0, x.shape[0], chunk_rows):
        part = x[s:s + chunk_rows]
        c = (part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))).to(
            device, torch.float64)
        if not bool(torch.isfinite(c).all()):
            raise UserError("effective rank: the features contain NaN or infinite values")
        gram += c.t() @ c
    eig = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0.0)
    return eig.sqrt()


def rankme(features, eps: float = EPS, chunk_rows: int = CHUNK_ROWS) -> float:
    """exp(entropy of p), p_k = sigma_k / sum(sigma) + eps: between 1 and min(N, D); features
    are taken as they are (not centred or normalised), as in the paper."""
    s = singular_values(features, chunk_rows)
    if float(s.sum()) == 0.0:
        return 1.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank_report(features) -> dict:
    """What eval.json holds under ``rankme``."""
    n, d = int(features.shape[0]), int(features.shape[1])
    return {"rank": rankme(features), "n": n, "dim": d,
            "protocol": "RankMe (Garrido et al. 2023): exp(entropy) of the normalised singular "
                        "values (+1e-7) of the training features, not centred; at most "
                        f"min(N, D) = {min(n, d)}"}
