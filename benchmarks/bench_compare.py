"""Every method and random initialisation under one budget, through `ssl-zoo compare`.

    python benchmarks/bench_compare.py [--n-train 10000] [--minutes 10 | --epochs N]
                                       [--seeds 0,1] [--parallel 2] [--methods ...] [--out DIR]
                                       [--set train.eval_every_epochs=4]

Trains every method (default: all ten built in) on the first N images of the shared CIFAR-10
subset (our ``npz:`` source) with the same backbone and seed(s), each with its own defaults, for
the same number of minutes of training (``compare --minutes``: each run's epochs fixed from a
timed warm-up) or of epochs; evaluates each with the harness (kNN both protocols periodically and
at the end, linear probe, k-means NMI on the 10,000 test images) and copies ``comparison.json``
and its three charts into ``benchmarks/results/``.

``--parallel N`` keeps N ``ssl-zoo compare`` processes busy, each with one thread and one
(method, seed) at a time, seeds outermost (every method has its first seed before any has its
second); on a 2-core machine with N=2 every run trains on one core under the same load. A last
``compare`` over every method and seed finds each run finished and writes the joint table.
Runs are kept in ``--out``, so a stopped benchmark continues where it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_NPZ, write_result  # noqa: E402
from bench_swav import prepared_subset  # noqa: E402

CHARTS = ("knn_per_epoch.png", "knn_per_minute.png", "final_metrics.png")
METHODS = ("swav,simclr,moco,pcl,dino,byol,barlowtwins,vicreg,deepclusterv2,selav2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=10000)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None)
    budget.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_compare"),
                   help="keep the runs here (resumable)")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    if args.minutes is None and args.epochs is None:
        args.minutes = 10.0
    out = args.out
    npz = prepared_subset(args.npz, args.n_train, out)
    amount = (["--minutes", str(args.minutes)] if args.minutes is not None
              else ["--epochs", str(args.epochs)])
    common = ["--dataset", f"npz:{npz}", *amount, "--seeds", args.seeds, "--out", str(out),
              "--set", "eval.pictures=false"] + [x for s in args.set for x in ("--set", s)]
    methods = [m for m in args.methods.split(",") if m]
    base = [sys.executable, "-m", "ssl_zoo", "compare"]
    if args.parallel > 1:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        seed_list = [s for s in args.seeds.split(",") if s]
        items = [(m, s) for s in seed_list for m in methods]

        def one(item: tuple[str, str]) -> int:
            m, s = item
            cmd = [*base, "--methods", m, *common]
            cmd[cmd.index("--seeds") + 1] = s
            with open(logs / f"{m}_seed{s}.log", "w") as log:
                return subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

        with ThreadPoolExecutor(args.parallel) as pool:
            failed = [it for it, rc in zip(items, pool.map(one, items)) if rc]
        if failed:
            sys.exit(f"compare failed for {failed}; see {logs}/")
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
    how = (f"{args.parallel} runs at a time, one thread each" if args.parallel > 1
           else "one run at a time, all threads")
    every = next((x.split("=", 1)[1] for x in args.set
                  if x.startswith("train.eval_every_epochs=")), "1")
    spent = (f"{args.minutes:g} minutes of training per run (epochs fixed from a timed "
             f"warm-up; periodic kNN every {every} epoch(s), not counted)"
             if args.minutes is not None
             else f"{args.epochs} epochs")
    write_result("compare", {
        "what": (f"ssl-zoo compare, first {args.n_train} images of the shared CIFAR-10 subset, "
                 f"small ConvNet, {spent}, seeds {args.seeds}, {how}; each method's defaults; "
                 f"kNN on the 10,000 test images with the training images as memory"),
        **result})


if __name__ == "__main__":
    main()
