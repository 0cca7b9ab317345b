"""faiss wrapper: exact search and k-means against brute force in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.faiss_utils import (
    has_faiss_gpu,
    inner_product_search,
    kmeans,
    nearest_centroid,
)


def brute_top_k(q: np.ndarray, db: np.ndarray, k: int):
    """float64 inner products, full sort, best first."""
    s = q.astype(np.float64) @ db.astype(np.float64).T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def blobs(n_per: int, k: int, d: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    y = torch.arange(k).repeat_interleave(n_per)
    return centres[y] + spread * torch.randn(k * n_per, d, generator=g), y


def test_search_equals_float64_brute_force():
    g = torch.Generator().manual_seed(0)
    db, q = torch.randn(300, 12, generator=g), torch.randn(50, 12, generator=g)
    ref_s, ref_i = brute_top_k(q.numpy(), db.numpy(), 9)
    gaps = np.diff(-np.sort(-(q.double() @ db.double().t()).numpy(), axis=1)[:, :10], axis=1)
    assert np.abs(gaps).min() > 1e-5  # no near-ties: the order is well defined
    sims, idx = inner_product_search(q, db, 9)
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64 and sims.shape == (50, 9)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_allclose(sims.numpy(), ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_search_equals_one_chunk(chunk):
    g = torch.Generator().manual_seed(1)
    db, q = torch.randn(400, 8, generator=g), torch.randn(123, 8, generator=g)
    s1, i1 = inner_product_search(q, db, 5, chunk_size=1_000_000)
    s2, i2 = inner_product_search(q, db, 5, chunk_size=chunk)
    assert torch.equal(i1, i2) and torch.equal(s1, s2)


def test_search_takes_numpy_float64_and_strided_tensors():
    g = torch.Generator().manual_seed(2)
    db = torch.randn(6, 200, generator=g).t()  # non-contiguous view (200, 6)
    q = torch.randn(20, 6, generator=g)
    s_t, i_t = inner_product_search(q, db, 3)
    s_n, i_n = inner_product_search(q.double().numpy(), db.contiguous().double().numpy(), 3)
    assert torch.equal(i_t, i_n) and torch.allclose(s_t, s_n)
    s0, i0 = inner_product_search(q[:0], db, 3)
    assert s0.shape == (0, 3) and i0.shape == (0, 3)


def test_search_rejects_bad_input_clearly():
    db, q = torch.randn(10, 4), torch.randn(3, 4)
    with pytest.raises(UserError, match="k=11"):
        inner_product_search(q, db, 11)
    with pytest.raises(UserError, match="k=0"):
        inner_product_search(q, db, 0)
    with pytest.raises(UserError, match="empty"):
        inner_product_search(q, db[:0], 1)
    with pytest.raises(UserError, match="dimensions"):
        inner_product_search(torch.randn(3, 5), db, 1)
    with pytest.raises(UserError, match="NaN"):
        inner_product_search(q, torch.full((10, 4), float("nan")), 1)
    with pytest.raises(UserError, match="2-D"):
        inner_product_search(q, torch.randn(10), 1)


def test_kmeans_recovers_separated_blobs_and_is_consistent():
    x, y = blobs(40, 5, 16, 0.3, seed=3)
    cents, assign, dist = kmeans(x, 5, niter=30, seed=0, nredo=3, init="kmeans++")
    assert cents.shape == (5, 16) and assign.shape == (200,) and dist.shape == (200,)
    assert assign.dtype == torch.int64
    # the partition is the true one: a bijection between blobs and clusters
    pairs = set(zip(y.tolist(), assign.tolist()))
    assert len(pairs) == 5 and len({a for _, a in pairs}) == 5
    # every point sits at its nearest centroid, at the reported squared distance (float64 loop)
    xd, cd = x.double().numpy(), cents.double().numpy()
    for i in range(len(xd)):
        d2 = ((xd[i] - cd) ** 2).sum(1)
        assert int(np.argmin(d2)) == int(assign[i])
        assert float(dist[i]) == pytest.approx(d2.min(), rel=1e-4, abs=1e-3)
    # converged Lloyd: each centroid is the mean of its members
    for c in range(5):
        np.testing.assert_allclose(cd[c], xd[assign.numpy() == c].mean(0), atol=1e-3)


def test_kmeans_is_deterministic_for_a_seed_and_spherical_centroids_are_unit():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 8, generator=g)
    a = kmeans(x, 6, seed=7)
    b = kmeans(x, 6, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    xs = torch.nn.functional.normalize(x, dim=1)
    cents, assign, _ = kmeans(xs, 6, seed=0, spherical=True)
    torch.testing.assert_close(cents.norm(dim=1), torch.ones(6), atol=1e-4, rtol=0)
    # spherical assignment: largest inner product
    assert torch.equal(assign, (xs.double() @ cents.double().t()).argmax(1))


def test_kmeans_errors_are_clear():
    x = torch.randn(5, 3)
    with pytest.raises(UserError, match="at least 6 points"):
        kmeans(x, 6)
    with pytest.raises(UserError, match="at least one cluster"):
        kmeans(x, 0)
    kmeans(x, 5)  # N == k is fine


@pytest.mark.parametrize("spherical", [False, True])
def test_nearest_centroid_equals_brute_force(spherical):
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(250, 10, generator=g), torch.randn(13, 10, generator=g)
    assign, dist = nearest_centroid(x, c, spherical=spherical)
    xd, cd = x.double(), c.double()
    ref = (xd @ cd.t()).argmax(1) if spherical else torch.cdist(xd, cd).argmin(1)
    assert torch.equal(assign, ref)
    torch.testing.assert_close(dist.double(), ((xd - cd[ref]) ** 2).sum(1), rtol=1e-4,
                               atol=1e-4)


def test_gpu_request_without_gpu_is_a_clear_error():
    if has_faiss_gpu():
        pytest.skip("this machine has faiss-gpu and a GPU")
    assert has_faiss_gpu() is False
    with pytest.raises(UserError, match="GPU"):
        inner_product_search(torch.randn(3, 4), torch.randn(10, 4), 2, gpu=True)
    with pytest.raises(UserError, match="GPU"):
        kmeans(torch.randn(30, 4), 2, gpu=True)


def test_kmeans_plus_plus_seeds_distinct_blobs_and_survives_duplicates():
    from ssl_zoo.evaluation.faiss_utils import kmeans_plus_plus

    x, y = blobs(30, 4, 8, 0.1, seed=6)
    xn = x.numpy()
    for seed in range(10):
        seeds = kmeans_plus_plus(xn, 4, seed)
        rows = [int(np.flatnonzero((xn == s).all(1))[0]) for s in seeds]  # data points
        assert sorted(y[rows].tolist()) == [0, 1, 2, 3]
    dup = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 12 rows
    seeds = kmeans_plus_plus(dup, 5, 0)
    assert seeds.shape == (5, 3) and len({tuple(r) for r in seeds.tolist()}) == 3
    _, assign, _ = kmeans(dup, 3, init="kmeans++", seed=0)
    assert len(set(zip(assign.tolist(), np.argmax(dup, 1).tolist()))) == 3


def test_gpu_routing_with_a_stand_in_gpu_faiss(monkeypatch):
    """Without a GPU here, check the routing: GPU index when present, CPU for k > 2048."""
    import faiss

    import ssl_zoo.evaluation.faiss_utils as fu

    made = []

    class StandInGpuFlatIP(faiss.IndexFlatIP):  # behaves like the GPU index, on the CPU
        def __init__(self, res, dim, cfg):
            super().__init__(dim)
            made.append(("flat", cfg.device))

    class Config:
        device = -1

    def to_gpu(res, device, index):
        made.append(("to_gpu", device))
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatConfig", Config, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatIP", StandInGpuFlatIP, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    fu._gpu_resources.cache_clear()
    try:
        assert fu.has_faiss_gpu()
        g = torch.Generator().manual_seed(7)
        db, q = torch.randn(3000, 4, generator=g), torch.randn(5, 4, generator=g)
        index = fu.FlatIPIndex(db)
        assert index.on_gpu and made == [("flat", 0)]
        s_gpu, i_gpu = index.search(q.numpy(), 10)
        assert index._cpu is None  # small k: answered by the GPU index
        index.search(q.numpy(), fu.GPU_MAX_K + 1)
        assert index._cpu is not None  # larger than the GPU k-selection allows: CPU
        s_cpu, i_cpu = inner_product_search(q, db, 10, gpu=False)
        assert np.array_equal(i_gpu, i_cpu.numpy())
        nearest_centroid(q, db[:7])
        assert made[-1] == ("to_gpu", 0)
    finally:
        fu._gpu_resources.cache_clear()
