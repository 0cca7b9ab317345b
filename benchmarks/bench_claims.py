"""The SwAV paper's claims, reproduced at small scale, each as a pair of variants with seeds.

1. multi-crop (2x32 + 4x16) beats 2 crops (2x32, the CIFAR-size default) at equal epochs
   (Sec. 3.2, Table 4 / Fig. 3);
2. at a small batch with many prototypes, the queue helps (Sec. 4.3, App. A.1);
3. learned prototypes beat fixed random ones (Sec. 4.3 / App. "prototypes");
4. Sinkhorn with 3 iterations against 1 (App. A.1 uses 3).

    python benchmarks/bench_claims.py [--n-train 5000] [--epochs 6] [--seeds 0,1,2] [--jobs 2]

Every run: ``ssl-zoo train --method swav`` with its defaults unless the variant says otherwise
(small ConvNet, batch 128, Adam), first N images of the shared CIFAR-10 subset, kNN top-1 (k=20,
T=0.07 and k=200, T=0.1) on the 10,000 test images, one run per seed. A claim "holds" only when
the first variant's mean beats the second's by more than the spread between seeds (the larger
of the two variants' max-min ranges); "reversed" when the second wins by that much; otherwise
"within seed noise". Finished runs are kept in ``OUT/results.jsonl`` (resumable).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_NPZ, write_result  # noqa: E402
from bench_swav import prepared_subset  # noqa: E402
from bench_swav_sweep import logged_runs, run_logged, train_one  # noqa: E402

VARIANTS = {
    # the default variant also measures the random-init floor (same seed, same backbone)
    "default": ("defaults (2x32, learned prototypes, 3 iterations, no queue)",
                ["eval.baseline=true"]),
    "multi": ("2x32 + 4x16 (multi-crop)", ["views.groups.1.count=4"]),
    "b32+queue": ("batch 32, K=300, queue 960 from epoch 2",
                  ["train.batch_size=32", "method.num_prototypes=300",
                   "method.queue_length=960", "method.queue_start_epoch=1"]),
    "b32": ("batch 32, K=300, no queue", ["train.batch_size=32", "method.num_prototypes=300"]),
    "fixed": ("fixed random prototypes", ["method.learn_prototypes=false"]),
    "1iter": ("1 Sinkhorn iteration", ["method.sinkhorn_iterations=1"]),
}
CLAIMS = [("multi-crop beats 2 crops", "multi", "default"),
          ("the queue helps at a small batch with many prototypes", "b32+queue", "b32"),
          ("learned prototypes beat fixed random ones", "default", "fixed"),
          ("3 Sinkhorn iterations beat 1", "default", "1iter")]


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def verdict(a: dict, b: dict) -> tuple[str, float, float]:
    """(holds | reversed | within seed noise, difference of means, seed spread)."""
    diff = a["mean"] - b["mean"]
    noise = max(a["max"] - a["min"], b["max"] - b["min"])
    if diff > noise:
        return "holds", diff, noise
    if -diff > noise:
        return "reversed", diff, noise
    return "within seed noise", diff, noise


def seed_summary(mine: list[dict]) -> dict:
    """One variant's finished runs (one per seed) summarised: seeds, kNN stats, mean loss."""
    return {"seeds": sorted(r["seed"] for r in mine),
            "knn_k20": stats([r["knn_k20"] for r in mine]),
            "knn_k200": stats([r["knn_k200"] for r in mine]),
            "final_loss": statistics.fmean(r["final_loss"] for r in mine)}


def write_claims(name: str, setting: str, runs: list[dict], rows: list[dict]) -> None:
    """``results/NAME.json``: the claim rows, the random-init floor of ``runs`` and what was
    measured (``setting``, then the protocol and the verdict rule every claims table shares)."""
    floors = [r["random_init_k20"] for r in runs if "random_init_k20" in r]
    write_result(name, {
        "what": (f"{setting}; kNN top-1 on the 10,000 test images, mean ± sd (min-max) over "
                 f"seeds; 'holds' only when the difference of means exceeds the larger max-min "
                 f"range"),
        "random_init_knn_k20": stats(floors) if floors else None, "claims": rows})


def claims_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every claims benchmark takes (data, budget, seeds, parallel runs, folder)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(out))
    return p


def claims_args(p: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[int]]:
    """Parsed options and the seeds; exits with one line when the data file is missing."""
    args = p.parse_args()
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    return args, [int(s) for s in args.seeds.split(",")]


def main() -> None:
    args, seeds = claims_args(claims_parser(__doc__, "runs/swav_claims"))
    npz = prepared_subset(args.npz, args.n_train, args.out)
    log = args.out / "results.jsonl"
    budget = {"n_train": args.n_train, "epochs": args.epochs}
    runs = logged_runs(log, budget)
    done = {(r["variant"], r["seed"]) for r in runs}
    # seeds outermost: every variant has its first seed before any has its third
    todo = [(v, s) for s in seeds for v in VARIANTS if (v, s) not in done]

    def work(item):
        name, seed = item
        tag = name.replace("+", "_")
        res = train_one(npz, args.epochs, VARIANTS[name][1], seed,
                        args.out / f"{tag}_s{seed}_e{args.epochs}")
        print(f"{name:10s} seed {seed}: kNN {res['knn_k20']:.4f}", flush=True)
        return {"variant": name, "seed": seed, "budget": budget, **res}

    run_logged(log, runs, todo, work, args.jobs)

    def summary(name: str) -> dict:
        mine = [r for r in runs if r["variant"] == name]
        return {"variant": name, "label": VARIANTS[name][0], "overrides": VARIANTS[name][1],
                **seed_summary(mine)}

    rows = []
    for claim, a, b in CLAIMS:
        va, vb = summary(a), summary(b)
        word, diff, noise = verdict(va["knn_k20"], vb["knn_k20"])
        rows.append({"claim": claim, "variants": [va, vb], "verdict": word,
                     "difference": diff, "seed_spread": noise})
    write_claims("swav_claims",
                 f"SwAV ablations, small ConvNet, first {args.n_train} images of the shared "
                 f"CIFAR-10 subset, {args.epochs} epochs, batch 128 unless stated, Adam, seeds "
                 f"{args.seeds} per variant ({args.jobs} runs at a time, one thread each)",
                 runs, rows)


if __name__ == "__main__":
    main()
