"""MoCo's shuffling BN across two gloo processes (CPU): each rank's keys, and the queue, equal
what one process computes by applying rank 0's permutation and the same group split by hand."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.method import TrainContext
from ssl_zoo_methods.moco import MoCo, MoCoConfig, shuffled_bn_keys

WORLD = 2
N = 12  # global batch; 6 images per rank


def build_model(groups: int) -> MoCo:
    torch.manual_seed(0)
    net = ConvNet(width=0.25)  # batch norm in the key encoder: the statistics are per group
    return MoCo(net, net.out_dim, MoCoConfig(queue_length=32, proj_dim=8, head_batch_norm=True,
                                             shuffle_bn_groups=groups))


def _worker(rank: int, tmp: str, payload: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=WORLD)
    try:
        result = {}
        part = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        for groups in (2, 4):
            model = build_model(groups)
            model.load_state_dict(payload["state"])
            torch.manual_seed(100 + rank)  # the ranks' generators differ: rank 0's perm counts
            local, everyone = shuffled_bn_keys(model.key, payload["x"][part], groups)
            torch.manual_seed(200 + rank)
            model(Views.from_crops([c[part] for c in payload["crops"]]))
            model.after_optimizer_step(TrainContext())  # the step's keys enter the queue
            result[groups] = {"local": local, "everyone": everyone,
                              "queue": model.queue.features.clone()}
        torch.save(result, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def reference_keys(encoder, images: torch.Tensor, seed: int, groups: int) -> torch.Tensor:
    """One process: rank 0's permutation, rank r encodes the shuffled rows r*n .. (r+1)*n - 1
    cut into groups / WORLD consecutive groups, one forward each; keys back in image order."""
    torch.manual_seed(seed)
    perm = torch.randperm(len(images))
    n = len(images) // WORLD
    keys = torch.empty(len(images), 8)
    with torch.no_grad():
        for r in range(WORLD):
            rows = perm[r * n:(r + 1) * n]
            per_group = n // (groups // WORLD)
            for start in range(0, n, per_group):
                chunk = rows[start:start + per_group]
                keys[chunk] = encoder(images[chunk])
    return keys


def test_cross_rank_shuffled_bn_equals_one_process_with_the_same_permutation(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 16, 16, generator=g)
    crops = [torch.randn(N, 3, 16, 16, generator=g) for _ in range(2)]
    state = build_model(2).state_dict()
    payload = {"x": x, "crops": crops, "state": state}
    mp.spawn(_worker, args=(str(tmp_path), payload), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    for groups in (2, 4):  # one group per rank (the reference's shuffle), two per rank
        model = build_model(groups)
        model.load_state_dict(state)
        ranks = [res[groups] for res in results]
        expected = reference_keys(model.key, x, seed=100, groups=groups)
        torch.testing.assert_close(torch.cat([r["local"] for r in ranks]), expected,
                                   rtol=1e-5, atol=1e-6)
        for r in ranks:
            torch.testing.assert_close(r["everyone"], expected, rtol=1e-5, atol=1e-6)
        # the groups matter: one batch norm over all images, or each rank's own contiguous
        # half, gives other keys
        with torch.no_grad():
            whole = model.key(x)
            halves = torch.cat([model.key(half) for half in x.chunk(WORLD)])
        assert not torch.allclose(whole, expected, atol=1e-3)
        assert not torch.allclose(halves, expected, atol=1e-3)

        # the method: after one step both ranks' queues start with the keys of all 12 images
        # of crop 1, computed as above with rank 0's permutation of that step
        queue_keys = reference_keys(model.key, crops[1], seed=200, groups=groups)
        for r in ranks:
            torch.testing.assert_close(r["queue"][:N], F.normalize(queue_keys, dim=1),
                                       rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"])
