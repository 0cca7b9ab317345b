"""SeLa-v2 (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", Sec. 4.2 and App. B: SeLa, Asano et al. 2020, rebuilt with SwAV's improvements).

Algorithm: DeepCluster-v2's (:mod:`ssl_zoo_methods.deepclusterv2`: MLP head, unit embeddings,
temperature, multi-crop, a memory of every image's assigned-crop embeddings from the last epoch,
several heads, every crop predicting its image's label), with SeLa's self-labelling in place of
k-means: at every epoch start each head scores the whole memory against its prototypes, and
Sinkhorn-Knopp with equipartition (:func:`ssl_zoo.modules.sinkhorn.sinkhorn`, SwAV's, here over
the whole dataset rather than a batch) splits the N images equally among the K prototypes; each
image's label is its largest code (SeLa Sec. 3.1: hard labels). Unlike DeepCluster-v2's
centroids, the prototypes are trained by the loss (SeLa's classification head) and kept on the
unit sphere after every step (as SwAV's).

Distributed: every rank holds the whole memory; each puts its slice of the rows into the
distributed Sinkhorn (per-prototype sums over all ranks), takes the argmax of its rows, and a sum
over ranks of the slices gives every rank every label: the labels of one process.

Deviations: SeLa itself optimises the labels with its own Sinkhorn (lambda 25, i.e. epsilon
0.04) on the full-dataset posteriors of a separate pass, a few times per epoch; the SwAV paper
gives SeLa-v2's assignment step as above, with SwAV's epsilon 0.05. The scores are of the
memory (last epoch's embeddings), as DeepCluster-v2's k-means, not of a new pass.
Memory: N x K floats per head at the epoch start (ImageNet, K 3000: 15 GB, on rank's device in
slices of N / world).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo.modules.distributed import all_reduce_sum, get_rank, get_world_size
from ssl_zoo.modules.sinkhorn import sinkhorn
from ssl_zoo_methods.deepclusterv2 import DeepClusterV2, DeepClusterV2Config


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def equipartition_labels(scores: torch.Tensor, epsilon: float, iterations: int,
                         use_float64: bool = False) -> torch.Tensor:
    """Hard labels (N,) of scores (N, K): the largest Sinkhorn-Knopp code of each row, the codes
    splitting all rows (of every rank, when distributed) equally among the K columns (SeLa
    Sec. 3.1, solved as SwAV App. A.1)."""
    return sinkhorn(scores, epsilon, iterations, use_float64).argmax(dim=1)


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
@dataclass
class SeLaV2Config(DeepClusterV2Config):
    """SeLa-v2 hyper-parameters: DeepCluster-v2's plus the self-labelling's."""

    epsilon: float = 0.05
    """Entropic regularisation of the Sinkhorn problem (SwAV: 0.05; SeLa: 1/lambda = 0.04)."""
    sinkhorn_iterations: int = 10
    """Sinkhorn-Knopp iterations over the whole dataset (SwAV's 3 are for one batch)."""
    sinkhorn_float64: bool = False
    """Run the dataset-wide Sinkhorn in float64 (twice the memory of N x K)."""

    def validate(self, image_size: int, batch_size: int, dataset_size: int) -> None:
        super().validate(image_size, batch_size, dataset_size)
        if not self.epsilon > 0:
            raise ConfigError(f"method.epsilon must be > 0 (SwAV: 0.05), got {self.epsilon}")
        if self.sinkhorn_iterations < 1:
            raise ConfigError(f"method.sinkhorn_iterations must be >= 1, got "
                              f"{self.sinkhorn_iterations}")


class SeLaV2(DeepClusterV2):
    """SeLa-v2: predict each image's equipartitioned self-label of the last epoch's embeddings."""

    name = "selav2"
    description = ("SeLa-v2: predict Sinkhorn self-labels of the whole dataset "
                   "(Asano et al. 2020; Caron et al. 2020)")
    Config = SeLaV2Config
    config: SeLaV2Config
    learn_prototypes = True

    @torch.no_grad()
    def head_assignments(self, head: int, features: torch.Tensor, epoch: int) -> torch.Tensor:
        """Head ``head``'s label of every image: this rank's consecutive slice of the memory
        scored against the head's prototypes, one distributed Sinkhorn over all slices, the
        slices' labels summed over ranks into every rank's copy."""
        c = self.config
        n, world, rank = features.shape[0], get_world_size(), get_rank()
        sizes = [len(part) for part in torch.arange(n).tensor_split(world)]
        start = sum(sizes[:rank])
        mine = features[start:start + sizes[rank]]
        with torch.autocast(features.device.type, enabled=False):
            scores = self.prototypes[head](mine.float())
        labels = torch.zeros(n, dtype=torch.long, device=features.device)
        labels[start:start + sizes[rank]] = equipartition_labels(
            scores, c.epsilon, c.sinkhorn_iterations, c.sinkhorn_float64)
        return all_reduce_sum(labels)

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """As DeepCluster-v2 (the memory takes the step's embeddings), and the prototypes go
        back onto the unit sphere, so scores stay cosines (SwAV Sec. 3.1)."""
        super().after_optimizer_step(ctx)
        for p in self.prototypes:
            p.normalize_()
