"""kNN time and agreement: our faiss path against scikit-learn's brute-force cosine kNN.

50,000 x 512 training features drawn around 100 Gaussian blobs (each blob belongs to one of 10
classes; blobs overlap, so accuracy is below 1), 10,000 queries from the same blobs, k=20. The
sklearn comparison uses uniform votes (``KNeighborsClassifier(algorithm="brute",
metric="cosine")``; ours with ``temperature=None``): predictions must agree. Also timed: our
weighted kNN (k=20, T=0.07), both evaluation protocols from one search (k=20 T=0.07 and k=200
T=0.1), and the same uniform vote from a plain torch matmul + topk (no faiss). Each time is the
best of ``--repeats`` runs, all in this one process on the same inputs.

    python benchmarks/bench_knn.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from ssl_zoo.evaluation.faiss_utils import has_faiss_gpu, inner_product_search
from ssl_zoo.evaluation.knn import knn_classify, knn_protocols


def clustered(n: int, centres: torch.Tensor, class_of_centre: torch.Tensor, spread: float,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points around randomly chosen blob centres, labelled by the blob's class."""
    c = torch.randint(0, len(centres), (n,), generator=g)
    return centres[c] + spread * torch.randn(n, centres.shape[1], generator=g), class_of_centre[c]


def best_of(repeats: int, fn):
    """(smallest wall time in seconds, result of the last call)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def torch_uniform_knn(xtr, ytr, xte, k, num_classes, chunk=2048):
    """The same uniform vote from torch alone: normalise, matmul, topk, bincount per row."""
    tr = torch.nn.functional.normalize(xtr, dim=1)
    out = []
    for start in range(0, len(xte), chunk):
        q = torch.nn.functional.normalize(xte[start:start + chunk], dim=1)
        idx = (q @ tr.t()).topk(k, dim=1).indices
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, ytr[idx], torch.ones(idx.shape))
        out.append(votes.argmax(1))
    return torch.cat(out)


def main() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k x 512 train, 2k queries, 1 run")
    p.add_argument("--repeats", type=int, default=None, help="runs per timing (default 2)")
    args = p.parse_args()
    n, q = (10_000, 2_000) if args.quick else (50_000, 10_000)
    repeats = args.repeats or (1 if args.quick else 2)
    d, k, blobs, classes, spread = 512, 20, 100, 10, 4.0
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(blobs, d, generator=g)
    class_of_centre = torch.arange(blobs) % classes
    xtr, ytr = clustered(n, centres, class_of_centre, spread, g)
    xte, yte = clustered(q, centres, class_of_centre, spread, g)
    inner_product_search(xte[:10], xtr[:100], 5)  # load faiss and its thread pool untimed

    t_uniform, (_, ours_uniform) = best_of(
        repeats, lambda: knn_classify(xtr, ytr, xte, k, None, classes))
    t_weighted, (_, ours_weighted) = best_of(
        repeats, lambda: knn_classify(xtr, ytr, xte, k, 0.07, classes))
    t_both, both = best_of(repeats, lambda: knn_protocols(xtr, ytr, xte, yte))
    t_torch, torch_pred = best_of(
        repeats, lambda: torch_uniform_knn(xtr, ytr, xte, k, classes))

    def sklearn_run():
        clf = KNeighborsClassifier(k, algorithm="brute", metric="cosine")
        return torch.from_numpy(clf.fit(xtr.numpy(), ytr.numpy()).predict(xte.numpy()))

    t_sklearn, ref = best_of(repeats, sklearn_run)

    # queries whose k-th and (k+1)-th neighbours are nearly tied may legitimately differ
    sims, _ = inner_product_search(torch.nn.functional.normalize(xte, dim=1),
                                   torch.nn.functional.normalize(xtr, dim=1), k + 1)
    near_tie = (sims[:, k - 1] - sims[:, k]) < 1e-5
    differ = ours_uniform != ref
    agreement = float((~differ).float().mean())

    def acc(pred):
        return float((pred == yte).float().mean())

    where = "GPU" if has_faiss_gpu() else "CPU"
    rows = [
        {"name": f"ssl-zoo, faiss {where}, uniform votes k=20", "time_s": t_uniform,
         "agreement": agreement, "accuracy": acc(ours_uniform)},
        {"name": "scikit-learn KNeighborsClassifier, brute, cosine, uniform k=20",
         "time_s": t_sklearn, "accuracy": acc(ref)},
        {"name": f"ssl-zoo, faiss {where}, weighted k=20 T=0.07", "time_s": t_weighted,
         "accuracy": acc(ours_weighted)},
        {"name": "ssl-zoo, both protocols (k=20 T=0.07, k=200 T=0.1), one search",
         "time_s": t_both, "accuracy": both["k20_t0.07"]["top1"],
         "accuracy_k200": both["k200_t0.1"]["top1"]},
        {"name": "torch matmul + topk (no faiss), uniform k=20", "time_s": t_torch,
         "agreement": float((torch_pred == ref).float().mean()), "accuracy": acc(torch_pred)},
    ]
    for r in rows:
        print(f"{r['name']:<70} {r['time_s']:7.2f} s  acc {r['accuracy']:.4f}"
              + (f"  agreement {r['agreement']:.4f}" if "agreement" in r else ""))
    print(f"speed-up over scikit-learn: {t_sklearn / t_uniform:.1f}x; "
          f"disagreements {int(differ.sum())} ({int((differ & near_tie).sum())} at near-ties)")
    write_result("knn", {
        "what": (f"{n:,} x {d} training features around {blobs} Gaussian blobs "
                 f"({classes} classes, spread {spread}), {q:,} queries, k={k}; "
                 f"best of {repeats} runs"),
        "rows": rows,
        "speedup_vs_sklearn": t_sklearn / t_uniform,
        "agreement": agreement,
        "disagreements": int(differ.sum()),
        "disagreements_at_near_ties": int((differ & near_tie).sum()),
        "quick": bool(args.quick),
    })


if __name__ == "__main__":
    main()
