"""The SwAV paper's multi-crop claim (Sec. 3.2 / 4.2, Fig. 3 / Table 4), method by method.

The paper finds that adding small local crops to two global crops helps every method it tries,
and helps the clustering methods (SwAV, DeepCluster-v2, SeLa-v2) most. Here each of SwAV,
DeepCluster-v2, SeLa-v2 and one contrastive method (SimCLR, whose multi-crop form is the paper's
App. A.8) trains twice per seed at equal epochs: with two crops, and with two crops plus four
half-size local crops (at 32 px: 2x32 + 4x16, global scale (0.14, 1), local (0.05, 0.14)).

    python benchmarks/bench_multicrop.py [--n-train 5000] [--epochs 6] [--seeds 0,1,2]
                                         [--jobs 2] [--only swav/multi/0,...]

Every run: ``ssl-zoo train --method M`` with M's defaults apart from the crops (small ConvNet,
each method's batch and optimiser), first N images of the shared CIFAR-10 subset, kNN top-1
(k=20, T=0.07 and k=200, T=0.1) on the 10,000 test images. The verdict is ``bench_claims``'s:
"holds" only when multi-crop's mean beats two crops' by more than the larger max-min range over
seeds. Finished runs are kept in ``OUT/results.jsonl`` (resumable; ``--only`` runs a few of them,
e.g. from a job queue, and the summary is written from every finished run).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_claims import (  # noqa: E402
    claims_args,
    claims_parser,
    seed_summary,
    verdict,
    write_claims,
)
from bench_swav import prepared_subset  # noqa: E402
from bench_swav_sweep import logged_runs, run_logged, train_one  # noqa: E402

# method -> (its crops with two global crops only, with 2 + 4 local crops); a method's default
# is one of the two (SwAV's 32-px default is two crops, DeepCluster-v2's and SeLa-v2's multi-crop)
VARIANTS = {
    "swav": ([], ["views.groups.1.count=4"]),
    "deepclusterv2": (["views.groups.1.count=0"], []),
    "selav2": (["views.groups.1.count=0"], []),
    "simclr": ([], ["method.num_local_crops=4"]),
}
LABELS = {"2crops": "2 crops (2x32)", "multi": "2x32 + 4x16 (multi-crop)"}


def overrides(method: str, variant: str) -> list[str]:
    """The --set assignments of ``method``'s ``variant`` ("2crops" or "multi")."""
    return VARIANTS[method][0 if variant == "2crops" else 1]


def main() -> None:
    p = claims_parser(__doc__, "runs/multicrop")
    p.add_argument("--methods", default=",".join(VARIANTS))
    p.add_argument("--only", default="", help="METHOD/VARIANT/SEED,...: run just these")
    args, seeds = claims_args(p)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(VARIANTS))
    if unknown:
        sys.exit(f"--methods: no variants for {unknown}; known: {', '.join(VARIANTS)}")
    npz = prepared_subset(args.npz, args.n_train, args.out)
    log = args.out / "results.jsonl"
    budget = {"n_train": args.n_train, "epochs": args.epochs}
    runs = logged_runs(log, budget)
    done = {(r["method"], r["variant"], r["seed"]) for r in runs}
    # seeds outermost: every cell has its first seed before any has its third
    todo = [(m, v, s) for s in seeds for m in methods for v in LABELS if (m, v, s) not in done]
    if args.only:
        wanted = {tuple(x.split("/")) for x in args.only.split(",")}
        todo = [t for t in todo if (t[0], t[1], str(t[2])) in wanted]

    def work(item):
        method, variant, seed = item
        sets = overrides(method, variant)
        if method == methods[0] and variant == "2crops":
            sets = [*sets, "eval.baseline=true"]  # the random-init floor, once per seed
        res = train_one(npz, args.epochs, sets, seed,
                        args.out / f"{method}_{variant}_s{seed}_e{args.epochs}", method=method)
        print(f"{method:14s} {variant:7s} seed {seed}: kNN {res['knn_k20']:.4f}", flush=True)
        return {"method": method, "variant": variant, "seed": seed, "budget": budget, **res}

    run_logged(log, runs, todo, work, args.jobs)

    def summary(method: str, variant: str) -> dict | None:
        mine = [r for r in runs if r["method"] == method and r["variant"] == variant]
        if not mine:
            return None
        return {"variant": variant, "label": LABELS[variant],
                "overrides": overrides(method, variant),
                **seed_summary(mine),
                "images_per_s": statistics.fmean(r["images_per_s"] for r in mine)}

    rows = []
    for m in methods:
        multi, two = summary(m, "multi"), summary(m, "2crops")
        if multi is None or two is None:
            continue
        word, diff, noise = verdict(multi["knn_k20"], two["knn_k20"])
        rows.append({"claim": f"{m}: multi-crop beats 2 crops", "method": m,
                     "variants": [multi, two], "verdict": word, "difference": diff,
                     "seed_spread": noise,
                     "time_ratio": two["images_per_s"] / multi["images_per_s"]})
    write_claims("multicrop_claims",
                 f"multi-crop against 2 crops at equal epochs, small ConvNet, first "
                 f"{args.n_train} images of the shared CIFAR-10 subset, {args.epochs} epochs, "
                 f"each method's defaults apart from the crops, seeds {args.seeds} per variant "
                 f"({args.jobs} runs at a time, one thread each)", runs, rows)


if __name__ == "__main__":
    main()
