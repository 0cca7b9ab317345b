"""SwAV on `demo` with 1 and 2 processes on this machine: images/s of each, side by side.

    python benchmarks/bench_ddp.py [--epochs 2] [--device cpu]

On a 2-core CPU the two processes share the same two cores (one thread each, against two
threads for the single process), so this measures the overhead of DDP and the gathers, not a
speed-up; on a multi-GPU machine the same script measures scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def run(nproc: int, epochs: int, device: str, out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 2) // nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "ssl_zoo", "train", "--method", "swav", "--dataset", "demo",
           "--epochs", str(epochs), "--batch-size", str(128 // nproc), "--no-eval",
           "--no-progress", "--device", device, "--out", str(out), "--nproc", str(nproc)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "train_summary.json").read_text())
    return {"processes": nproc, "threads_per_process": threads, "global_batch": 128,
            "images_per_s": summary["images_per_s"], "wall_s": summary["wall_s"],
            "final_loss": summary["final_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args.epochs, args.device, Path(tmp) / f"p{n}") for n in (1, 2)]
    for r in rows:
        print(r)
    write_result(f"ddp_{args.device}", {
        "what": f"SwAV defaults on demo (2,000 images, small ConvNet, 2x32+4x16 crops), global "
                f"batch 128, {args.epochs} epochs, no evaluation; images/s over the whole run",
        "rows": rows, "ratio_2_over_1": rows[1]["images_per_s"] / rows[0]["images_per_s"]})


if __name__ == "__main__":
    main()
