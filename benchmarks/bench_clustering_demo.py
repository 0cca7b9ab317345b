"""DeepCluster-v2 and SeLa-v2 with their defaults on the demo set: kNN, linear probe and NMI
against the same backbone at random initialisation, and the wall time of each run.

    python benchmarks/bench_clustering_demo.py             # trains the variants (~15 min each idle)
    python benchmarks/bench_clustering_demo.py --from-runs runs/a runs/b   # collect finished runs

Each run is ``ssl-zoo train --method <file>:<Class> --dataset demo`` (every default; extra
``--set`` arguments per variant); the JSON goes to benchmarks/results/clustering_demo.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from _common import write_result

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (method spec, extra --set values)
    "deepclusterv2": ("methods/deepclusterv2.py:DeepClusterV2", []),
    "selav2": ("methods/selav2.py:SeLaV2", []),
    "deepclusterv2-2crops": ("methods/deepclusterv2.py:DeepClusterV2",
                             ["views.groups.1.count=0"]),  # the local crops off
}


def summary(run: Path) -> dict:
    """The numbers of one finished run: its eval.json beside its checkpoint's clock."""
    ev = json.loads((run / "eval.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    cfg = json.loads((run / "config.json").read_text())
    info = json.loads((run / "run_info.json").read_text())

    def numbers(e: dict) -> dict:
        return {"knn_k20": e["knn"]["k20_t0.07"]["top1"],
                "knn_k200": e["knn"]["k200_t0.1"]["top1"],
                "linear": e["linear"]["test_top1"], "nmi": e["clustering"]["nmi"]}

    return {"method": cfg["method"], "epochs": cfg["train"]["epochs"], "steps": ckpt["step"],
            "crops": [[g["count"], g["size"]] for g in info["view_spec"]["groups"]],
            "method_config": cfg.get("method_config"), "train_seconds": ckpt["train_seconds"],
            "trained": numbers(ev), "random_init": numbers(ev["random_init"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-runs", nargs="*", type=Path, help="finished run directories")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-clustering-demo")
    args = p.parse_args()
    runs = args.from_runs
    if not runs:
        runs = []
        for name, (spec, sets) in VARIANTS.items():
            out = args.out / name
            cmd = [sys.executable, "-m", "ssl_zoo", "train", "--method", str(ROOT / spec),
                   "--dataset", "demo", "--no-progress", "--out", str(out)]
            for s in sets:
                cmd += ["--set", s]
            subprocess.run(cmd, check=True, cwd=ROOT)
            runs.append(out)
    rows = [summary(r) for r in runs]
    for row in rows:  # "methods/selav2.py:SeLaV2" -> "selav2"
        row["name"] = Path(row["method"].split(":")[0]).stem
    write_result("clustering_demo", {
        "what": "defaults on the demo set (2,000 train / 1,000 test CIFAR-10 images, 32 px), "
                "small ConvNet, 40 epochs, 2 CPU cores shared with other jobs (times are "
                "loaded wall clocks); kNN weighted, cosine; random init = the same backbone "
                "untrained; one seed each. The 2x32 row is DeepCluster-v2 with "
                "views.groups.1.count=0 (not a default), stopped by SIGTERM at epoch 12 and "
                "resumed (resume is bit-exact; its minutes are both segments').",
        "rows": rows})


if __name__ == "__main__":
    main()
