"""kNN time and agreement: our faiss path against scikit-learn's brute-force cosine kNN.

50,000 x 512 training features drawn around 100 clustered centres (10 classes), 10,000
queries; k=20. The sklearn comparison uses uniform votes (``KNeighborsClassifier(
algorithm="brute", metric="cosine")``, the only weighting both share) and predictions must
agree; our weighted kNN (k=20, T=0.07) is timed too.

    python benchmarks/bench_knn.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from ssl_zoo.evaluation.faiss_utils import has_faiss_gpu
from ssl_zoo.evaluation.knn import knn_scores


def clustered(n: int, d: int, centres: torch.Tensor, labels_of_centre: torch.Tensor,
              g: torch.Generator):
    c = torch.randint(0, len(centres), (n,), generator=g)
    x = centres[c] + 1.6 * torch.randn(n, d, generator=g)  # overlapping: accuracy < 1
    return x, labels_of_centre[c]


def main() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n, q, d, k = (10_000, 2_000, 512, 20) if args.quick else (50_000, 10_000, 512, 20)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(100, d, generator=g)
    owner = torch.randint(0, 10, (100,), generator=g)
    xtr, ytr = clustered(n, d, centres, owner, g)
    xte, yte = clustered(q, d, centres, owner, g)

    t0 = time.perf_counter()
    ours_uniform = knn_scores(xtr, ytr, xte, k, None, 10).argmax(1)
    t_ours_uniform = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_weighted = knn_scores(xtr, ytr, xte, k, 0.07, 10).argmax(1)
    t_ours_weighted = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf = KNeighborsClassifier(k, algorithm="brute", metric="cosine").fit(xtr.numpy(),
                                                                          ytr.numpy())
    ref = torch.from_numpy(clf.predict(xte.numpy()))
    t_sklearn = time.perf_counter() - t0
    agreement = float((ours_uniform == ref).float().mean())
    rows = [
        {"name": f"ssl-zoo faiss ({'GPU' if has_faiss_gpu() else 'CPU'}), uniform votes",
         "time_s": t_ours_uniform, "agreement": agreement,
         "accuracy": float((ours_uniform == yte).float().mean())},
        {"name": "ssl-zoo faiss, weighted T=0.07", "time_s": t_ours_weighted,
         "accuracy": float((ours_weighted == yte).float().mean())},
        {"name": "sklearn KNeighborsClassifier brute cosine", "time_s": t_sklearn,
         "accuracy": float((ref == yte).float().mean())},
    ]
    for r in rows:
        print(r)
    write_result("knn", {
        "what": f"{n:,} x {d} clustered training features, {q:,} queries, k={k}",
        "rows": rows, "speedup_vs_sklearn": t_sklearn / t_ours_uniform,
        "agreement": agreement})


if __name__ == "__main__":
    main()
