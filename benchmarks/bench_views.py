"""View generation: our batched multi-crop against lightly's per-image ``SwaVTransform``.

Ours: ``make_views`` on whole uint8 batches on the device, in the training process, as the
trainer calls it (a random batch taken from an in-memory uint8 tensor, moved to the device,
one call per step). lightly: its ``SwaVTransform`` (PIL, per image) in a
``torch.utils.data.DataLoader`` with 2 workers, the way lightly, solo-learn and the official
SwAV code feed training. Same crop sizes, counts and scales, same augmentations (SwAV preset:
flip, colour jitter 0.8/0.8/0.8/0.2 with p=0.8, grayscale 0.2; blur p=0.5 at ImageNet size):

* 2x32 + 4x16 crops of the 32x32 demo images (CIFAR-10);
* 2x224 + 6x96 crops of 256x256 images (the demo images upsampled; content does not change
  the cost).

The two run alternately, ``--rounds`` times each, and the median rate of each is kept. Ours
runs with 1 torch thread and with torch's default (one per core); the better of the two is the
headline figure (both are kept): on a loaded machine two intra-op threads can wait on each
other, on a quiet one they help. On a machine with CUDA, ours is also timed on the GPU (the
lightly loader stays on the CPU). Without lightly installed (or with ``--skip-lightly``) only
ours is timed and the JSON says so.

    python benchmarks/bench_views.py            # 2 rounds of 8 s per contender and input
    python benchmarks/bench_views.py --quick    # 1 round of 3 s
    python benchmarks/bench_views.py --lightly-workers 16 --out /tmp/res   # a bigger machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from ssl_zoo.data.views import ViewSpec, make_views, multi_crop  # noqa: E402

LIGHTLY_WORKERS = 2
"""Default loader workers of the lightly side (``--lightly-workers``)."""


def ours_rate(images: torch.Tensor, spec: ViewSpec, device: str, batch: int,
              seconds: float) -> float:
    """Images/s of ``make_views`` on random uint8 batches of ``images`` (on the CPU)."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    pick = torch.Generator().manual_seed(1)

    def step() -> None:
        idx = torch.randint(0, len(images), (batch,), generator=pick)
        make_views(images[idx].to(dev, non_blocking=True), spec, gen)

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


class LightlyLoader:
    """lightly's SwaVTransform per PIL image in a DataLoader with persistent workers."""

    def __init__(self, images: np.ndarray, sizes, counts, scales_min, scales_max,
                 blur: float, mean, std, batch: int, workers: int = LIGHTLY_WORKERS):
        from lightly.transforms import SwaVTransform
        from torch.utils.data import DataLoader

        transform = SwaVTransform(
            crop_sizes=sizes, crop_counts=counts, crop_min_scales=scales_min,
            crop_max_scales=scales_max, hf_prob=0.5, cj_prob=0.8, cj_strength=1.0,
            cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8, cj_hue=0.2, random_gray_scale=0.2,
            gaussian_blur=blur, sigmas=(0.1, 2.0), normalize={"mean": list(mean),
                                                             "std": list(std)})
        self.loader = DataLoader(_PILImages(images, transform), batch_size=batch, shuffle=True,
                                 num_workers=workers, persistent_workers=True,
                                 drop_last=True, prefetch_factor=1)
        self.workers = workers
        self.it = iter(self.loader)
        self.next_batch()  # start the workers

    def next_batch(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def rate(self, seconds: float) -> float:
        for _ in range(self.workers):  # drain what was prefetched while we were idle
            self.next_batch()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += self.next_batch()[0].shape[0]
        return done / (time.perf_counter() - start)

    def close(self) -> None:
        del self.it
        del self.loader


class _PILImages(torch.utils.data.Dataset):
    """The images as PIL, repeated to a long epoch (no loader restart while timing)."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i % len(self.images)]))


def demo_images() -> torch.Tensor:
    """The 2,000 demo training images, uint8 (N, 3, 32, 32)."""
    from ssl_zoo.data.sources import open_source

    return open_source("demo").train.images


def compare(name: str, crops: str, images: torch.Tensor, spec: ViewSpec, batch: int,
            rounds: int, seconds: float, threads: list[int], gpu: bool,
            lightly_workers: int | None = LIGHTLY_WORKERS) -> dict:
    """Alternate ours (at each thread count) and lightly ``rounds`` times on the same images
    and crops (``lightly_workers=None``: ours only)."""
    groups = spec.groups
    lightly = None if lightly_workers is None else LightlyLoader(
        images.permute(0, 2, 3, 1).contiguous().numpy(), tuple(g.size for g in groups),
        tuple(g.count for g in groups), tuple(g.scale[0] for g in groups),
        tuple(g.scale[1] for g in groups), groups[0].blur_p, spec.mean, spec.std, batch,
        lightly_workers)
    default_threads = torch.get_num_threads()
    ours: dict[int, list[float]] = {t: [] for t in threads}
    ref = []
    for r in range(rounds):
        for t in threads:
            torch.set_num_threads(t)
            ours[t].append(ours_rate(images, spec, "cpu", batch, seconds))
        torch.set_num_threads(default_threads)
        if lightly is not None:
            ref.append(lightly.rate(seconds))
        mine = ", ".join(f"{v[-1]:,.0f} ({t} thr)" for t, v in ours.items())
        theirs = f"lightly {ref[-1]:,.0f} img/s" if ref else "lightly not run"
        print(f"  {name} round {r + 1}: ours {mine}; {theirs}", flush=True)
    if lightly is not None:
        lightly.close()
    by_threads = {str(t): statistics.median(v) for t, v in ours.items()}
    best = max(by_threads, key=by_threads.get)
    row = {"input": name, "crops": crops, "batch": batch,
           "ours_images_per_s": by_threads[best], "ours_threads": int(best),
           "ours_images_per_s_by_threads": by_threads,
           "lightly_images_per_s": statistics.median(ref) if ref else None,
           "lightly_workers": lightly_workers,
           "ours_rounds_by_threads": {str(t): v for t, v in ours.items()},
           "lightly_rounds": ref}
    if ref:
        row["ratio"] = row["ours_images_per_s"] / row["lightly_images_per_s"]
        row["ratio_by_threads"] = {t: v / row["lightly_images_per_s"]
                                   for t, v in by_threads.items()}
    if gpu:
        row["ours_gpu_images_per_s"] = ours_rate(images, spec, "cuda", batch, seconds)
        if ref:
            row["gpu_ratio"] = row["ours_gpu_images_per_s"] / row["lightly_images_per_s"]
    return row


def lightly_available() -> bool:
    try:
        import lightly.transforms  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round of 3 s per contender")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="per contender and round")
    p.add_argument("--threads", default=None,
                   help="comma-separated torch thread counts for ours (default: 1 and torch's "
                        "default)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU figure")
    p.add_argument("--skip-lightly", action="store_true",
                   help="time ours only (also what happens when lightly is not installed)")
    p.add_argument("--lightly-workers", type=int, default=LIGHTLY_WORKERS,
                   help=f"DataLoader workers of the lightly side (default {LIGHTLY_WORKERS})")
    p.add_argument("--n-big", type=int, default=256,
                   help="how many 256x256 images the second input holds (default 256)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for views.json (default benchmarks/results)")
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, torch.get_num_threads()}))
    gpu = torch.cuda.is_available() and not args.no_gpu
    load_before = os.getloadavg()[0]
    lightly_note = None
    workers: int | None = args.lightly_workers
    if args.skip_lightly:
        workers, lightly_note = None, "lightly side skipped (--skip-lightly)"
    elif not lightly_available():
        workers, lightly_note = None, "lightly side skipped: lightly is not installed"
    if lightly_note:
        print(f"note: {lightly_note}", flush=True)

    cifar = demo_images()
    rows = [compare("32x32 (CIFAR-10 demo images)", "2x32 + 4x16", cifar,
                    multi_crop(32, 16, 4, (0.14, 1.0), (0.05, 0.14), 1.0, 0.0, 0.0), 256,
                    rounds, seconds, threads, gpu, workers)]
    print(rows[-1], flush=True)
    big = torch.nn.functional.interpolate(cifar[:args.n_big].float(), size=256, mode="bilinear",
                                          align_corners=False, antialias=False)
    big = big.round_().clamp_(0, 255).to(torch.uint8)
    rows.append(compare("256x256 (demo images upsampled)", "2x224 + 6x96", big,
                        multi_crop(224, 96, 6, (0.14, 1.0), (0.05, 0.14), 1.0, 0.5, 0.0), 32,
                        rounds, seconds, threads, gpu, workers))
    print(rows[-1], flush=True)
    write_result("views", {
        "what": ("images/s of view generation, median over rounds; ours: make_views on random "
                 "uint8 batches in the training process, best of the torch thread counts "
                 "tried (all kept); lightly: "
                 f"SwaVTransform per PIL image through a DataLoader with "
                 f"{args.lightly_workers} workers; SwAV preset (flip, jitter 0.8/0.8/0.8/0.2 "
                 "p=0.8, grayscale 0.2, blur p=0.5 at ImageNet size)"
                 + (f"; {lightly_note}" if lightly_note else "")),
        "torch_threads_tried": threads, "lightly_workers": workers, "lightly_note": lightly_note,
        "rounds": rounds, "seconds_per_round": seconds, "quick": args.quick,
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "rows": rows,
    }, args.out)


if __name__ == "__main__":
    main()
