"""The SwAV paper's claims, reproduced at small scale, each as a pair of runs on one budget.

1. multi-crop (2x32 + 4x16) beats 2 crops (2x32) at equal epochs (Sec. 3.2, Table 4 / Fig. 3);
2. at a small batch with many prototypes, the queue helps (Sec. 4.3, App. A.1);
3. learned prototypes beat fixed random ones (Sec. 4.3 / App. "prototypes");
4. Sinkhorn with 3 iterations against 1 (App. A.1 uses 3).

    python benchmarks/bench_claims.py [--n-train 5000] [--epochs 10]

Every run: small ConvNet, first N images of the shared CIFAR-10 subset, Adam, seed 0, kNN top-1
(k=20, T=0.07 and k=200, T=0.1) on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_NPZ, write_result  # noqa: E402
from bench_swav import ours, subset_npz  # noqa: E402

CLAIMS = [
    ("multi-crop beats 2 crops",
     ("2x32 + 4x16 (default)", [], 4), ("2x32", [], 0)),
    ("the queue helps at a small batch with many prototypes (batch 32, K=300)",
     ("queue 960 from epoch 2", ["train.batch_size=32", "method.num_prototypes=300",
                                 "method.queue_length=960", "method.queue_start_epoch=2"], 4),
     ("no queue", ["train.batch_size=32", "method.num_prototypes=300"], 4)),
    ("learned prototypes beat fixed random ones",
     ("learned (default)", [], 4), ("fixed random", ["method.learn_prototypes=false"], 4)),
    ("Sinkhorn with 3 iterations against 1",
     ("3 iterations (default)", [], 4), ("1 iteration", ["method.sinkhorn_iterations=1"], 4)),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    cache: dict[tuple, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz = subset_npz(args.npz, args.n_train, tmp / "subset.npz")
        for claim, *variants in CLAIMS:
            row = {"claim": claim, "variants": []}
            for label, sets, n_local in variants:
                key = (tuple(sets), n_local)
                if key not in cache:
                    extra = [x for s in sets for x in ("--set", s)]
                    res = ours(npz, args.epochs, n_local, tmp / f"run{len(cache)}", extra)
                    res.pop("config")
                    cache[key] = res
                    print(claim, label, res["knn"]["k20_t0.07"]["top1"], flush=True)
                res = cache[key]
                row["variants"].append({"label": label, "overrides": sets, "n_local": n_local,
                                        "knn_k20_top1": res["knn"]["k20_t0.07"]["top1"],
                                        "knn_k200_top1": res["knn"]["k200_t0.1"]["top1"],
                                        "final_loss": res["final_loss"],
                                        "images_per_s": res["images_per_s"]})
            a, b = row["variants"]
            row["holds"] = a["knn_k20_top1"] > b["knn_k20_top1"]
            rows.append(row)
    write_result("swav_claims", {
        "what": (f"SwAV ablations, small ConvNet, first {args.n_train} images of the shared "
                 f"CIFAR-10 subset, {args.epochs} epochs, batch 128 unless stated, Adam, seed 0; "
                 f"kNN top-1 on the 10,000 test images"), "claims": rows})


if __name__ == "__main__":
    main()
