"""The one place that talks to faiss: exact inner-product search, k-means and nearest centroid.

Everything runs on the GPU when the installed faiss has GPU support (faiss-gpu) and a CUDA device
is visible, on the CPU otherwise; ``gpu=`` forces either. Inputs may be torch tensors (any device,
any float dtype) or numpy arrays; they are copied to contiguous float32 on the host, which is what
faiss takes. Results are CPU torch tensors: float32 scores, int64 indices.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ssl_zoo.errors import UserError

# faiss's GPU k-selection handles at most this many neighbours per query; larger k runs on the CPU
GPU_MAX_K = 2048


def _faiss():
    import faiss

    # faiss's OpenMP pool defaults to every core; follow torch's setting so both agree
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


def has_faiss_gpu() -> bool:
    """True when the installed faiss has GPU support and torch sees a CUDA device."""
    try:
        faiss = _faiss()
    except ImportError:  # pragma: no cover - faiss is a dependency
        return False
    return (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
            and torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def _gpu_resources():  # pragma: no cover - needs faiss-gpu and a GPU
    """One faiss GPU resource object per process (creating one reserves scratch memory)."""
    return _faiss().StandardGpuResources()


def _use_gpu(gpu: bool | None) -> bool:
    if gpu is None:
        return has_faiss_gpu()
    if gpu and not has_faiss_gpu():
        raise UserError("faiss on the GPU was asked for, but the installed faiss has no GPU "
                        "support or no CUDA device is visible (install faiss-gpu, or pass "
                        "gpu=False)")
    return bool(gpu)


def as_float32_matrix(x, name: str = "input") -> np.ndarray:
    """``x`` (torch tensor or array, shape (N, D)) as a C-contiguous float32 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"{name} must be a 2-D (N, D) matrix, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise UserError(f"{name} has zero feature dimensions")
    if not np.isfinite(x).all():
        raise UserError(f"{name} holds NaN or infinite values (a diverged model?)")
    return x


class FlatIPIndex:
    """An exact (brute-force) inner-product index over a fixed database, CPU or GPU."""

    def __init__(self, database, *, gpu: bool | None = None):
        faiss = _faiss()
        db = as_float32_matrix(database, "database")
        if db.shape[0] == 0:
            raise UserError("nearest-neighbour search over an empty database")
        self.n, self.dim = db.shape
        self._db = db
        self._cpu = None
        self._gpu = None
        if _use_gpu(gpu):  # pragma: no cover - needs faiss-gpu and a GPU
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = torch.cuda.current_device()
            self._gpu = faiss.GpuIndexFlatIP(_gpu_resources(), self.dim, cfg)
            self._gpu.add(db)

    def _cpu_index(self):
        if self._cpu is None:
            self._cpu = _faiss().IndexFlatIP(self.dim)
            self._cpu.add(self._db)
        return self._cpu

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.n:
            raise UserError(f"asked for k={k} neighbours in a database of {self.n} vectors "
                            f"(k must be between 1 and {self.n})")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 (Q, k), indices int64 (Q, k)), best first, for float32 queries."""
        self.check_k(k)
        if queries.shape[1] != self.dim:
            raise UserError(f"queries have {queries.shape[1]} dimensions, the database "
                            f"{self.dim}")
        index = self._gpu if (self._gpu is not None and k <= GPU_MAX_K) else self._cpu_index()
        sims, idx = index.search(queries, k)
        return sims, idx.astype(np.int64, copy=False)


def inner_product_search(queries, database, k: int, *, chunk_size: int = 8192,
                         gpu: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner products of every query against ``database`` (faiss IndexFlatIP).

    Returns (similarities float32 (Q, k), indices int64 (Q, k)) as CPU torch tensors, most
    similar first. Queries go in chunks of ``chunk_size`` so the GPU's scratch memory stays
    bounded. ``k`` must be between 1 and the database size (callers that want clamping, like the
    kNN classifier, clamp and say so themselves).
    """
    if chunk_size < 1:
        raise UserError(f"chunk_size must be positive, got {chunk_size}")
    index = FlatIPIndex(database, gpu=gpu)
    q = as_float32_matrix(queries, "queries")
    index.check_k(k)
    if q.shape[1] != index.dim:
        raise UserError(f"queries have {q.shape[1]} dimensions, the database {index.dim}")
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        sims[start:stop], idx[start:stop] = index.search(q[start:stop], k)
    return torch.from_numpy(sims), torch.from_numpy(idx)


def _squared_distance_to(x: np.ndarray, centroids: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """||x_i - c_{a_i}||^2 for every row, computed directly (no expansion, no cancellation)."""
    out = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], 65536):
        d = x[start:start + 65536] - centroids[assign[start:start + 65536]]
        out[start:start + 65536] = np.einsum("ij,ij->i", d, d)
    return out


def nearest_centroid(x, centroids, *, spherical: bool = False, gpu: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign every row of ``x`` to its closest centroid: (assignments int64 (N,), squared
    Euclidean distances to that centroid float32 (N,)).

    Closest means smallest Euclidean distance, or largest inner product when ``spherical`` (the
    assignment rule of spherical k-means); the distances are Euclidean either way.
    """
    faiss = _faiss()
    data = as_float32_matrix(x, "features")
    cents = as_float32_matrix(centroids, "centroids")
    if cents.shape[1] != data.shape[1]:
        raise UserError(f"centroids have {cents.shape[1]} dimensions, the features "
                        f"{data.shape[1]}")
    if data.shape[0] == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    index = (faiss.IndexFlatIP if spherical else faiss.IndexFlatL2)(cents.shape[1])
    if _use_gpu(gpu):  # pragma: no cover - needs faiss-gpu and a GPU
        index = faiss.index_cpu_to_gpu(_gpu_resources(), torch.cuda.current_device(), index)
    index.add(cents)
    assign = np.empty(data.shape[0], dtype=np.int64)
    for start in range(0, data.shape[0], 65536):
        _, i = index.search(data[start:start + 65536], 1)
        assign[start:start + 65536] = i[:, 0]
    return (torch.from_numpy(assign), torch.from_numpy(_squared_distance_to(data, cents, assign)))


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each next centre is a point drawn with
    probability proportional to its squared distance to the nearest centre chosen so far."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    d2 = ((x - x[chosen[0]]).astype(np.float64) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            nxt = int(rng.choice(n, p=d2 / total))
        else:  # every point coincides with a centre (duplicates): any unused point will do
            unused = np.setdiff1d(np.arange(n), chosen)
            nxt = int(rng.choice(unused))
        chosen.append(nxt)
        d2 = np.minimum(d2, ((x - x[nxt]).astype(np.float64) ** 2).sum(1))
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def kmeans(x, k: int, *, niter: int = 20, seed: int = 0, spherical: bool = False,
           gpu: bool | None = None, nredo: int = 1, init: str = "random"
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means by faiss.Kmeans: (centroids float32 (k, D), assignments int64 (N,),
    squared Euclidean distance of each point to its centroid float32 (N,)).

    All points are used (no subsampling to 256 per centroid, faiss's default). ``spherical``
    re-normalises the centroids to unit length after every iteration and assigns by inner product
    (for L2-normalised features). ``init`` is "random" (faiss's default: k distinct random points)
    or "kmeans++" (our seeding, O(N k D), far fewer merged clusters for small k). Of ``nredo``
    runs the one with the best objective is kept. Deterministic for a given ``seed`` on one
    machine. Raises ``UserError`` when there are fewer points than clusters.
    """
    faiss = _faiss()
    data = as_float32_matrix(x, "features")
    n, d = data.shape
    if k < 1:
        raise UserError(f"k-means needs at least one cluster, got k={k}")
    if n < k:
        raise UserError(f"k-means with k={k} clusters needs at least {k} points, got {n}")
    if niter < 1 or nredo < 1:
        raise UserError(f"k-means needs niter >= 1 and nredo >= 1, got {niter} and {nredo}")
    if init not in ("random", "kmeans++"):
        raise UserError(f"k-means init must be 'random' or 'kmeans++', got {init!r}")
    use_gpu = _use_gpu(gpu)
    common = dict(niter=niter, spherical=spherical, gpu=use_gpu, verbose=False,
                  min_points_per_centroid=1, max_points_per_centroid=n // k + 1)
    if init == "random":  # faiss runs the restarts itself
        km = faiss.Kmeans(d, k, seed=seed, nredo=nredo, **common)
        km.train(data)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).copy()
        assign, dist = nearest_centroid(data, centroids, spherical=spherical, gpu=use_gpu)
        return torch.from_numpy(centroids), assign, dist
    best = None
    for r in range(nredo):
        start = kmeans_plus_plus(data, k, seed + r)
        if spherical:
            start /= np.maximum(np.linalg.norm(start, axis=1, keepdims=True), 1e-12)
        km = faiss.Kmeans(d, k, seed=seed + r, nredo=1, **common)
        km.train(data, init_centroids=start)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32).copy()
        assign, dist = nearest_centroid(data, centroids, spherical=spherical, gpu=use_gpu)
        if spherical:  # maximise the summed cosine to the centroid
            cost = -float(np.einsum("ij,ij->", data, centroids[assign.numpy()]))
        else:  # minimise the summed squared distance
            cost = float(dist.double().sum())
        if best is None or cost < best[0]:
            best = (cost, torch.from_numpy(centroids), assign, dist)
    return best[1], best[2], best[3]
