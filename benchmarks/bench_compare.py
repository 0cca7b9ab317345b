"""All four methods and random initialisation under one budget, through `ssl-zoo compare`.

    python benchmarks/bench_compare.py [--n-train 10000] [--minutes 15 | --epochs 10]
                                       [--seeds 0] [--parallel 2] [--out DIR]

Trains every method on the first N images of the shared CIFAR-10 subset (our ``npz:`` source)
with the same backbone, batch and seed(s), for the same number of minutes of training
(``compare --minutes``: each method's epochs fixed from a timed warm-up) or of epochs; evaluates
each with the harness (kNN both protocols every epoch and at the end, linear probe, k-means NMI
on the 10,000 test images) and copies ``comparison.json`` and its three charts into
``benchmarks/results/``.

``--parallel 2`` runs two ``ssl-zoo compare`` processes at a time into the same folder, each
with one thread and half of the methods (on a 2-core machine every method then trains on one
core, and each is timed under the same load); a last ``compare`` over all methods finds every
run finished and writes the joint table. ``--parallel 1`` trains them one after another with
all threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_NPZ, write_result  # noqa: E402
from bench_swav import prepared_subset  # noqa: E402

CHARTS = ("knn_per_epoch.png", "knn_per_minute.png", "final_metrics.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=10000)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None)
    budget.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default="swav,simclr,moco,pcl")
    p.add_argument("--parallel", type=int, default=1, choices=(1, 2))
    p.add_argument("--out", type=Path, default=Path("runs/bench_compare"),
                   help="keep the runs here (resumable)")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    if args.minutes is None and args.epochs is None:
        args.minutes = 15.0
    out = args.out
    npz = prepared_subset(args.npz, args.n_train, out)
    amount = (["--minutes", str(args.minutes)] if args.minutes is not None
              else ["--epochs", str(args.epochs)])
    common = ["--dataset", f"npz:{npz}", *amount, "--seeds", args.seeds, "--out", str(out),
              "--set", "eval.pictures=false"] + [x for s in args.set for x in ("--set", s)]
    methods = [m for m in args.methods.split(",") if m]
    base = [sys.executable, "-m", "ssl_zoo", "compare"]
    if args.parallel == 2:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        halves = [methods[0::2], methods[1::2]]
        procs = [subprocess.Popen([*base, "--methods", ",".join(h), *common], env=env,
                                  stdout=open(out / f"part{i}.log", "w"), stderr=subprocess.STDOUT)
                 for i, h in enumerate(halves) if h]
        if any(pr.wait() for pr in procs):
            sys.exit(f"a compare process failed; see {out}/part*.log")
    subprocess.run([*base, "--methods", ",".join(methods), *common], check=True)
    result = json.loads((out / "comparison.json").read_text())
    for png in CHARTS:
        if (out / png).exists():
            shutil.copy(out / png, RESULTS / f"compare_{png}")
    for m in result["methods"]:
        for r in m["runs"]:
            r.pop("config", None)
            r.pop("run_dir", None)
    result["budget"]["dataset"] = f"first {args.n_train} images of the shared CIFAR-10 subset"
    how = ("two methods at a time, one thread each" if args.parallel == 2
           else "one method at a time, all threads")
    spent = (f"{args.minutes:g} minutes of training per method (epochs fixed from a timed "
             f"warm-up; periodic kNN not counted)" if args.minutes is not None
             else f"{args.epochs} epochs")
    write_result("compare", {
        "what": (f"ssl-zoo compare, first {args.n_train} images of the shared CIFAR-10 subset, "
                 f"small ConvNet, {spent}, seeds {args.seeds}, {how}; each method's defaults; "
                 f"kNN on the 10,000 test images with the training images as memory"),
        **result})


if __name__ == "__main__":
    main()
