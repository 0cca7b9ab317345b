"""What makes SwAV learn in a short run: a sweep of its small-scale settings, with seeds.

    python benchmarks/bench_swav_sweep.py [--n-train 5000] [--epochs 6] [--jobs 2]
                                          [--cells default,K=30,...] [--seeds 0,1,2]
                                          [--out DIR]

Each cell is one setting changed from the SwAV defaults (``ssl-zoo train --method swav`` on the
first N images of the shared CIFAR-10 subset through our ``npz:`` source: small ConvNet, batch
128, Adam, warm-up + cosine) and trained once per seed; kNN top-1 (k=20, T=0.07, cosine,
weighted) on the 10,000 test images with the N training images as memory. ``--jobs 2`` runs two
cells at a time, one thread each (accuracy of a seeded run does not depend on load; the
images/s column does, so compare it only within one sweep). Every finished run is kept in
``OUT/results.jsonl``: a sweep that was stopped goes on where it was, and more seeds or cells
can be added later. Writes ``benchmarks/results/swav_sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_NPZ, write_result  # noqa: E402
from bench_swav import prepared_subset  # noqa: E402

SWEEP_BASE = ["views.groups.1.count=4"]
"""What every cell starts from: SwAV's defaults as they were before this sweep (2x32 + 4x16);
the sweep moved the CIFAR-size default to 2 crops (the "2x32" cell)."""

# (name, what it changes, --set overrides on SWEEP_BASE); the first is the base itself
CELLS: list[tuple[str, str, list[str]]] = [
    ("default", "base: the defaults before the sweep (K=100, eps 0.03, T 0.1, 2x32+4x16, "
                "lr 0.002)", []),
    ("K=30", "prototypes", ["method.num_prototypes=30"]),
    ("K=300", "prototypes", ["method.num_prototypes=300"]),
    ("K=1000", "prototypes", ["method.num_prototypes=1000"]),
    ("K=3000", "prototypes", ["method.num_prototypes=3000"]),
    ("K=300+queue", "prototypes with the queue (1,280 embeddings from epoch 2)",
     ["method.num_prototypes=300", "method.queue_length=1280", "method.queue_start_epoch=1"]),
    ("K=3000+queue", "prototypes with the queue (1,280 embeddings from epoch 2)",
     ["method.num_prototypes=3000", "method.queue_length=1280", "method.queue_start_epoch=1"]),
    ("K=100+queue", "the queue (1,280 embeddings from epoch 2)",
     ["method.queue_length=1280", "method.queue_start_epoch=1"]),
    ("eps=0.02", "epsilon", ["method.epsilon=0.02"]),
    ("eps=0.05", "epsilon", ["method.epsilon=0.05"]),
    ("T=0.05", "temperature", ["method.temperature=0.05"]),
    ("T=0.2", "temperature", ["method.temperature=0.2"]),
    ("freeze 1 epoch", "prototype freezing (39 iterations)",
     ["method.freeze_prototypes_iters=39"]),
    ("hidden=128", "head width", ["method.hidden_dim=128"]),
    ("hidden=1024", "head width", ["method.hidden_dim=1024"]),
    ("lr=0.001", "learning rate (Adam, per 256)", ["train.lr_per_256=0.001"]),
    ("lr=0.004", "learning rate (Adam, per 256)", ["train.lr_per_256=0.004"]),
    ("2x32", "crops: 2 global only", ["views.groups.1.count=0"]),
    ("2x32+6x16", "crops: 6 local", ["views.groups.1.count=6"]),
    ("2x32+4x12", "crops: local size 12", ["views.groups.1.size=12"]),
    ("2x32+4x20", "crops: local size 20", ["views.groups.1.size=20"]),
    # round 2: the single changes that helped, together
    ("2x32 T=0.2", "2 crops and temperature 0.2",
     ["views.groups.1.count=0", "method.temperature=0.2"]),
    ("2x32 T=0.2 eps=0.02", "2 crops, temperature 0.2, epsilon 0.02",
     ["views.groups.1.count=0", "method.temperature=0.2", "method.epsilon=0.02"]),
    # round 3 (issue 26), from the current defaults (2x32): a short queue started late, and the
    # batch size at equal minutes (epochs from the side-by-side timing run in BATCH_TIMING)
    ("2x32+queue 256 from ep 4", "a short queue: 2 batches (256 embeddings), filled from "
     "epoch 4 of 6",
     ["views.groups.1.count=0", "method.queue_length=256", "method.queue_start_epoch=3"]),
    ("2x32+queue 384 from ep 5", "a short queue: 3 batches (384 embeddings), filled from "
     "epoch 5 of 6",
     ["views.groups.1.count=0", "method.queue_length=384", "method.queue_start_epoch=4"]),
    ("2x32 batch 64", "batch 64 at the minutes of batch 128: 1.11x its images/s, so 519 "
     "steps (33,216 images, 6.7 epochs; cosine to the last step)",
     ["views.groups.1.count=0", "train.batch_size=64", "train.epochs=7",
      "train.max_steps=519"]),
    ("2x32 batch 256", "batch 256 at the minutes of batch 128: 0.92x its images/s, so 108 "
     "steps (27,648 images, 5.5 epochs; cosine to the last step)",
     ["views.groups.1.count=0", "train.batch_size=256", "train.max_steps=108"]),
]
BATCH_TIMING = {
    "how": "images/s of batch 64 and 256 relative to batch 128 (2x32, one thread each), "
           "measured side by side: three 1-epoch runs at once (64: 345, 128: 310, 256: 298 "
           "img/s), three 2-epoch runs at once read over the window all three were running "
           "(64: 153, 128: 138, 256: 122), and 256 beside 128 two at a time as the sweep runs "
           "(68.2 vs 74.9); equal minutes = batch 128's 29,952 images (234 steps) x the "
           "ratio, as train.max_steps (the warm-up and cosine schedule span those steps)",
    "ratio_vs_128": {"64": 1.11, "256": 0.92},
}
"""How the batch cells' budgets were set (kept in the JSON)."""

VS_CELL = {name: "2x32" for name, _, sets in CELLS
           if name.startswith("2x32+queue") or name.startswith("2x32 batch")}
"""The cell each round-3 cell is compared with in the table (the others: the base)."""


def logged_runs(log: Path, budget: dict) -> list[dict]:
    """The finished runs kept in ``log`` (JSON lines) under this ``budget``."""
    runs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [r for r in runs if r["budget"] == budget]


def run_logged(log: Path, runs: list[dict], todo: list, work, jobs: int) -> None:
    """``work(item) -> record`` for every item, ``jobs`` at a time; each record is appended to
    ``log`` and to ``runs`` as soon as its run finishes (a stopped script loses nothing)."""
    lock = threading.Lock()

    def one(item):
        rec = work(item)
        with lock:
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            runs.append(rec)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))


def train_one(npz: Path, epochs: int, sets: list[str], seed: int, out: Path,
              method: str = "swav") -> dict:
    """One seeded ``ssl-zoo train`` of ``method`` on one thread; kNN only."""
    cmd = [sys.executable, "-m", "ssl_zoo", "train", "--method", method, "--dataset",
           f"npz:{npz}", "--epochs", str(epochs), "--out", str(out), "--no-progress",
           "--set", f"train.seed={seed}", "--set", "eval.linear=false",
           "--set", "eval.pictures=false", "--set", "eval.clustering=false",
           "--set", "eval.baseline=false", "--set", "train.logger=jsonl",
           *[x for s in sets for x in ("--set", s)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}\n{done.stderr[-2000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    ev = json.loads((out / "eval.json").read_text())
    res = {"knn_k20": ev["knn"]["k20_t0.07"]["top1"], "knn_k200": ev["knn"]["k200_t0.1"]["top1"],
           "final_loss": summary["final_loss"], "images_per_s": summary["images_per_s"]}
    if ev.get("random_init"):  # asked for with --set eval.baseline=true
        res["random_init_k20"] = ev["random_init"]["knn"]["k20_t0.07"]["top1"]
    return res


def summarise(runs: list[dict], cells: list[tuple[str, str, list[str]]]) -> list[dict]:
    rows = []
    for name, what, sets in cells:
        mine = [r for r in runs if r["cell"] == name]
        if not mine:
            continue
        k20 = [r["knn_k20"] for r in mine]
        rows.append({"cell": name, "changes": what, "overrides": sets,
                     "seeds": sorted(r["seed"] for r in mine),
                     "knn_k20_per_seed": {str(r["seed"]): r["knn_k20"] for r in mine},
                     "knn_k20_mean": statistics.mean(k20),
                     "knn_k20_min": min(k20), "knn_k20_max": max(k20),
                     "knn_k20_sd": statistics.stdev(k20) if len(k20) > 1 else None,
                     "final_loss_mean": statistics.mean(r["final_loss"] for r in mine),
                     "images_per_s_mean": statistics.mean(r["images_per_s"] for r in mine),
                     **({"vs_cell": VS_CELL[name]} if name in VS_CELL else {})})
    return rows


def with_earlier_rows(rows: list[dict], earlier: Path) -> list[dict]:
    """``rows`` with the rows of an earlier ``swav_sweep.json`` whose cells this log has not
    run (a sweep run from another log directory keeps the published rows), in CELLS order."""
    if not earlier.is_file():
        return rows
    have = {r["cell"] for r in rows}
    kept = [r for r in json.loads(earlier.read_text())["rows"] if r["cell"] not in have]
    order = {name: i for i, (name, _, _) in enumerate(CELLS)}
    return sorted(rows + kept, key=lambda r: order.get(r["cell"], len(order)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", action="append", default=[],
                   help="an override for every cell (a new base), e.g. method.epsilon=0.05")
    p.add_argument("--out", type=Path, default=Path("runs/swav_sweep"))
    p.add_argument("--write-only", action="store_true", help="only rewrite the JSON")
    args = p.parse_args()
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    names = [c[0] for c in CELLS]
    chosen = [c.strip() for c in args.cells.split(",") if c.strip()] or names
    unknown = [c for c in chosen if c not in names]
    if unknown:
        sys.exit(f"unknown cells {unknown}; known: {', '.join(names)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    npz = prepared_subset(args.npz, args.n_train, args.out)
    log = args.out / "results.jsonl"
    budget = {"n_train": args.n_train, "epochs": args.epochs, "base": args.set}
    runs = logged_runs(log, budget)
    done = {(r["cell"], r["seed"]) for r in runs}
    todo = [(c, s) for c in CELLS if c[0] in chosen for s in seeds if (c[0], s) not in done]

    def work(item):
        (name, _, sets), seed = item
        tag = name.replace("=", "").replace("+", "_").replace(" ", "_")
        res = train_one(npz, args.epochs, [*SWEEP_BASE, *args.set, *sets], seed,
                        args.out / f"{tag}_s{seed}_e{args.epochs}")
        print(f"{name:16s} seed {seed}: kNN {res['knn_k20']:.4f} loss {res['final_loss']:.3f}"
              f" ({res['images_per_s']:.0f} img/s)", flush=True)
        return {"cell": name, "seed": seed, "budget": budget, **res}

    if not args.write_only:
        run_logged(log, runs, todo, work, args.jobs)
    rows = with_earlier_rows(summarise(runs, CELLS), RESULTS / "swav_sweep.json")
    write_result("swav_sweep", {
        "what": (f"SwAV settings one at a time from the pre-sweep defaults, small ConvNet, first "
                 f"{args.n_train} images of the shared CIFAR-10 subset, {args.epochs} epochs, "
                 f"batch 128, Adam warm-up 1 epoch + cosine; kNN top-1 (k=20, T=0.07) on the "
                 f"10,000 test images; {args.jobs} runs at a time, one thread each"
                 + (f"; every cell also sets {', '.join(args.set)}" if args.set else "")),
        "spread": "min-max over seeds; sd = sample standard deviation",
        "batch_timing": BATCH_TIMING, "rows": rows})


if __name__ == "__main__":
    main()
