"""The feature probe at scale: seconds and peak memory on synthetic features, one size per process.

For each N (default 10k, 100k, 400k) a fresh process writes N x D float32 training features
(D=2048, ``--classes`` Gaussian class centres plus unit noise) and 10,000 test features into
``.npy`` files under ``--dir``, and another fresh process memory-maps them and runs the probe of
``ssl-zoo eval`` (``ssl_zoo.evaluation.linear.linear_probe``: its five weight decays fitted on
90% of train, the best refitted on all of it, test top-1) with ``--epochs`` passes and no
minimum step count, on the CPU. That process reports its wall time and its peak resident set
(``getrusage`` ``ru_maxrss``, which counts the pages of the memory-mapped features it read).
The bound checked is peak RSS <= the training features' bytes + 1.5 GiB, and the growth with N
is a least-squares line whose residuals are reported.

    python benchmarks/bench_eval.py [--sizes 10000,100000,400000] [--epochs 1] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from ssl_zoo.evaluation.linear import linear_probe

MIB = 1 << 20
BOUND_EXTRA_MIB = 1536
ROWS_PER_WRITE = 8192


def generate(directory: Path, n: int, n_test: int, dim: int, classes: int, seed: int) -> None:
    """train.npy / test.npy (float32 memmaps) and their labels, written a block at a time."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32) * 0.15
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", n), ("test", n_test)):
        labels = rng.integers(0, classes, rows)
        x = np.lib.format.open_memmap(directory / f"{split}.npy", mode="w+", dtype=np.float32,
                                      shape=(rows, dim))
        for s in range(0, rows, ROWS_PER_WRITE):
            y = labels[s:s + ROWS_PER_WRITE]
            x[s:s + len(y)] = centres[y] + rng.standard_normal((len(y), dim), dtype=np.float32)
        x.flush()
        del x
        np.save(directory / f"{split}_labels.npy", labels)


def measure(directory: Path, epochs: int) -> dict:
    """Run the probe on the memory-mapped features; wall seconds and peak RSS of this process."""
    xtr = np.load(directory / "train.npy", mmap_mode="r")
    xte = np.load(directory / "test.npy", mmap_mode="r")
    ytr, yte = np.load(directory / "train_labels.npy"), np.load(directory / "test_labels.npy")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = linear_probe(xtr, ytr, xte, yte, epochs=epochs, min_steps=0, seed=0)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_rss_mib": peak, "rss_before_probe_mib": rss_before,
            "test_top1": res["test_top1"], "weight_decay": res["weight_decay"],
            "steps_refit": res["steps"], "recipe": res["recipe"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,400000")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dir", default="/tmp/ssl_zoo_eval_scale")
    p.add_argument("--out-dir", help="results folder (default benchmarks/results)")
    p.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # child: write one size
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # child: run it
    args = p.parse_args()
    base = Path(args.dir)
    if args.generate:
        generate(base, args.generate, args.n_test, args.dim, args.classes, seed=0)
        return
    if args.measure:
        print(json.dumps(measure(base, args.epochs)))
        return

    rows = []
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--dim", str(args.dim), "--classes", str(args.classes), "--n-test",
              str(args.n_test), "--epochs", str(args.epochs), "--dir", str(base)]
    for n in (int(s) for s in args.sizes.split(",")):
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([*me, "--generate", str(n), *common], check=True)
        out = subprocess.run([*me, "--measure", *common], check=True, capture_output=True,
                             text=True).stdout
        got = json.loads(out.strip().splitlines()[-1])
        features_mib = n * args.dim * 4 / MIB
        row = {"n": n, "dim": args.dim, "classes": args.classes, "epochs": args.epochs,
               "n_test": args.n_test, **{k: got[k] for k in ("seconds", "peak_rss_mib")},
               "features_mib": features_mib, "bound_mib": features_mib + BOUND_EXTRA_MIB,
               "within_bound": got["peak_rss_mib"] <= features_mib + BOUND_EXTRA_MIB,
               "rss_before_probe_mib": got["rss_before_probe_mib"],
               "test_top1": got["test_top1"], "weight_decay": got["weight_decay"]}
        rows.append(row)
        recipe = got["recipe"]
        print(f"n={n}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB "
              f"(features {features_mib:.0f} MiB, bound {row['bound_mib']:.0f} MiB), "
              f"test top-1 {row['test_top1']:.3f}", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    ns = np.array([r["n"] for r in rows], dtype=np.float64)
    rss = np.array([r["peak_rss_mib"] for r in rows])
    slope, intercept = np.polyfit(ns, rss, 1) if len(rows) > 1 else (float("nan"), rss[0])
    residual = rss - (slope * ns + intercept)
    write_result("eval_scale", {
        "what": (f"feature probe (ssl-zoo eval's default recipe, {args.epochs} epoch(s), no "
                 f"minimum step count) on synthetic float32 features memory-mapped from .npy, "
                 f"D={args.dim}, {args.classes} classes, {args.n_test} test features, CPU, one "
                 f"fresh process per size; the machine's 2 cores were shared with 4 other "
                 f"engineers' jobs, so the seconds are slower and noisier than idle (RSS is "
                 f"what the bound is about)"),
        "rows": rows,
        "recipe": recipe,
        "rss_line": {"mib_per_million_rows": slope * 1e6, "intercept_mib": intercept,
                     "max_abs_residual_mib": float(np.abs(residual).max())},
        "bytes_per_row_features": args.dim * 4,
    }, args.out_dir)


if __name__ == "__main__":
    main()
