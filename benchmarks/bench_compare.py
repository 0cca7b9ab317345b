"""All four methods and random initialisation under one budget, through `ssl-zoo compare`.

    python benchmarks/bench_compare.py [--n-train 5000] [--epochs 10] [--methods swav,simclr,...]

Trains every method on the first N images of the shared CIFAR-10 subset (our ``npz:`` source)
with the same backbone, epochs, batch and seed, evaluates each with the harness (kNN both
protocols, linear probe, k-means NMI on the 10,000 test images) and copies the comparison JSON
and its two charts into ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_NPZ, write_result  # noqa: E402
from bench_swav import subset_npz  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--methods", default="swav,simclr,moco,pcl")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (resumable)")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "compare"
        out.mkdir(parents=True, exist_ok=True)
        npz = out / "subset.npz"
        if not npz.exists():
            subset_npz(args.npz, args.n_train, npz)
        cmd = [sys.executable, "-m", "ssl_zoo", "compare", "--methods", args.methods,
               "--dataset", f"npz:{npz}", "--epochs", str(args.epochs), "--out", str(out),
               "--set", "eval.pictures=false"] + [x for s in args.set for x in ("--set", s)]
        subprocess.run(cmd, check=True)
        result = json.loads((out / "comparison.json").read_text())
        for png in ("knn_per_epoch.png", "final_metrics.png"):
            if (out / png).exists():
                shutil.copy(out / png, RESULTS / f"compare_{png}")
    for r in result["methods"]:
        r.pop("config", None)
        r.pop("run_dir", None)
    write_result("compare", {
        "what": (f"ssl-zoo compare, first {args.n_train} images of the shared CIFAR-10 subset, "
                 f"small ConvNet, {args.epochs} epochs, each method's defaults; kNN on the "
                 f"10,000 test images with the training images as memory"), **result})


if __name__ == "__main__":
    main()
