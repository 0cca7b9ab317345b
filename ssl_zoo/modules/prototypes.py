"""A layer of unit-norm prototype vectors scored by cosine similarity (SwAV, Caron et al. 2020,
Sec. 3.1: "a set of K trainable prototype vectors ... we normalize them").

The layer is a bias-free linear map whose K rows are kept on the unit sphere: the owner calls
:meth:`Prototypes.normalize_` after every optimiser step that changed them (the constructor calls
it once), so with unit-norm inputs the scores are always cosines in [-1, 1]. The official SwAV code
normalises at the start of each iteration instead; normalising right after the step is the same
for every forward pass and leaves a checkpoint holding unit rows. (Re-normalising rows that are
already unit can flip their last bits, so a resumed run must not normalise again on loading.)

Freezing (SwAV keeps the prototypes fixed during the first iterations) is done by dropping the
gradient (:meth:`Prototypes.drop_grad_`), not by toggling ``requires_grad``: a ``None`` gradient
makes every torch optimiser skip the parameter, so neither weight decay nor momentum moves it,
and the parameter set seen by the optimiser and by DDP never changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Prototypes(nn.Module):
    """``num_prototypes`` unit vectors of size ``dim``; ``forward(z)`` is ``z @ weight.T``.

    ``learnable=False`` gives fixed random prototypes (uniform on the sphere): the parameter has
    ``requires_grad=False``, so it is left out of the optimiser and never changes. The weight is
    called ``weight`` (shape ``(num_prototypes, dim)``) like the official ``nn.Linear`` layer.
    """

    def __init__(self, dim: int, num_prototypes: int, *, learnable: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        if dim < 1 or num_prototypes < 1:
            raise ValueError(f"dim and num_prototypes must be >= 1, got {dim}, {num_prototypes}")
        # isotropic Gaussian rows, once normalised, are uniform on the unit sphere
        init = torch.randn(num_prototypes, dim, generator=generator)
        self.weight = nn.Parameter(init, requires_grad=learnable)
        self.normalize_()

    @property
    def num_prototypes(self) -> int:
        return self.weight.shape[0]

    @property
    def learnable(self) -> bool:
        return self.weight.requires_grad

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere, in place."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def drop_grad_(self) -> None:
        """Forget the prototypes' gradient, so the next optimiser step leaves them unchanged."""
        self.weight.grad = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Scores (N, K) of embeddings ``z`` (N, dim); cosines when ``z`` has unit rows."""
        return F.linear(z, self.weight.to(z.dtype))

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, dim={self.weight.shape[1]}, " \
               f"learnable={self.learnable}"
