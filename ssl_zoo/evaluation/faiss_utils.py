"""The one place that talks to faiss: exact inner-product search and k-means, on the GPU when
faiss-gpu and a CUDA device are present, on the CPU otherwise."""

from __future__ import annotations

import numpy as np
import torch

from ssl_zoo.errors import UserError


def _faiss():
    import faiss

    # faiss's OpenMP pool defaults to every core; follow torch's setting so both agree
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


def has_faiss_gpu() -> bool:
    """True when the installed faiss has GPU support and a GPU is visible."""
    try:
        faiss = _faiss()
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - faiss missing or broken
        return False


def _as_f32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def inner_product_search(queries, database, k: int, *, chunk_size: int = 8192,
                         gpu: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner products of every query against ``database``.

    Returns (similarities float32 (Q, k), indices int64 (Q, k)) as CPU torch tensors, best
    first. Queries go in chunks of ``chunk_size`` so memory stays bounded for large sets.
    """
    faiss = _faiss()
    db, q = _as_f32(database), _as_f32(queries)
    if db.shape[0] == 0:
        raise UserError("kNN search over an empty database")
    k = min(k, db.shape[0])
    index = faiss.IndexFlatIP(db.shape[1])
    use_gpu = has_faiss_gpu() if gpu is None else gpu
    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
    index.add(db)
    sims, idx = [], []
    for start in range(0, q.shape[0], chunk_size):
        s, i = index.search(q[start:start + chunk_size], k)
        sims.append(s)
        idx.append(i)
    return (torch.from_numpy(np.concatenate(sims)) if sims else torch.empty(0, k),
            torch.from_numpy(np.concatenate(idx)).long() if idx else torch.empty(0, k).long())


def kmeans(x, k: int, *, niter: int = 20, seed: int = 0, spherical: bool = False,
           gpu: bool | None = None, nredo: int = 1
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """faiss k-means: (centroids (k, D), assignments (N,) int64, squared distances (N,)).

    ``spherical`` normalises centroids after every iteration (for cosine features).
    """
    faiss = _faiss()
    data = _as_f32(x)
    n, d = data.shape
    if k < 1 or k > n:
        raise UserError(f"k-means with k={k} needs between 1 and {n} points (got {n})")
    use_gpu = has_faiss_gpu() if gpu is None else gpu
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, gpu=bool(use_gpu),
                      nredo=nredo, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(256, n // k + 1))
    km.train(data)
    dist, assign = km.index.search(data, 1)
    return (torch.from_numpy(km.centroids.copy()), torch.from_numpy(assign[:, 0]).long(),
            torch.from_numpy(dist[:, 0].copy()))
