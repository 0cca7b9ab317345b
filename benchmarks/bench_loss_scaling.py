"""Cost of the loss alone as the batch grows: SwAV (Sinkhorn + swapped prediction, K=3000)
against SimCLR (pairwise NT-Xent), time of forward + backward and peak memory.

The SwAV paper's central claim (Sec. 3.1): codes cost O(B K) per batch, so the method scales
to large batches, while a contrastive loss compares all 2B x 2B pairs. Each (method, batch)
point runs in a fresh subprocess so its peak memory is its own.

    python benchmarks/bench_loss_scaling.py            # 256 .. 16384 on this machine
    python benchmarks/bench_loss_scaling.py --quick    # 256 .. 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

DIM, K = 128, 3000
MEMORY_LIMIT_GB = 16  # the child fails cleanly (MemoryError) instead of swapping the machine


def child(method: str, batch: int, device: str, reps: int) -> dict:
    from ssl_zoo_methods.simclr import nt_xent
    from ssl_zoo_methods.swav import sinkhorn, swapped_prediction_loss

    if device == "cpu":
        limit = MEMORY_LIMIT_GB * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.manual_seed(0)
    dev = torch.device(device)
    z = torch.nn.functional.normalize(torch.randn(2 * batch, DIM, device=dev), dim=1)
    z.requires_grad_(True)
    protos = torch.nn.functional.normalize(torch.randn(K, DIM, device=dev), dim=1)
    protos.requires_grad_(True)

    def swav_step():
        scores = z @ protos.t()
        s = scores.chunk(2)
        codes = [sinkhorn(s[0]), sinkhorn(s[1])]
        loss = swapped_prediction_loss(s, codes, (0, 1), 0.1)
        loss.backward()

    def simclr_step():
        a, b = z.chunk(2)
        loss = nt_xent(a, b, 0.5)
        loss.backward()

    step = swav_step if method == "swav" else simclr_step
    times = []
    try:
        step()  # warm-up
        for _ in range(reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    except (RuntimeError, MemoryError) as exc:
        return {"method": method, "batch": batch, "error": f"out of memory ({type(exc).__name__})"}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": method, "batch": batch, "time_s": statistics.median(times),
            "peak_memory_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.device, args.reps)))
        return
    batches = [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192,
                                                          16384]
    rows = []
    for b in batches:
        pair = {}
        for m in ("swav", "simclr"):
            out = subprocess.run([sys.executable, __file__, "--child", m, str(b), "--device",
                                  args.device, "--reps", str(args.reps)],
                                 capture_output=True, text=True)
            res = (json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else
                   {"method": m, "batch": b, "error": f"exit {out.returncode}"})
            pair[m] = res
            print(res, flush=True)
        row = {"batch": b, "swav": pair["swav"], "simclr": pair["simclr"]}
        if "time_s" in pair["swav"] and "time_s" in pair["simclr"]:
            row["time_ratio_simclr_over_swav"] = pair["simclr"]["time_s"] / pair["swav"]["time_s"]
            row["memory_ratio_simclr_over_swav"] = (pair["simclr"]["peak_memory_mb"]
                                                    / pair["swav"]["peak_memory_mb"])
        rows.append(row)
    write_result(f"loss_scaling_{args.device}", {
        "what": "forward+backward of the loss alone on given unit embeddings (2 crops x batch, "
                f"dim {DIM}); SwAV: scores vs K={K} prototypes, Sinkhorn (3 it., eps 0.05) per "
                "crop, swapped prediction T=0.1; SimCLR: NT-Xent T=0.5 over 2B views. Median of "
                f"{args.reps} runs after one warm-up; peak memory = process max RSS on CPU "
                "(includes the ~300 MB of the Python/torch process) or max allocated on CUDA",
        "device": args.device, "rows": rows})


if __name__ == "__main__":
    main()
