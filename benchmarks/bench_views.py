"""View generation: our batched multi-crop against lightly's per-image ``SwaVTransform``.

Ours: ``make_views`` on whole uint8 batches, on the device (one process). lightly: its
``SwaVTransform`` (PIL, per image) in a ``torch.utils.data.DataLoader`` with 2 workers, the way
lightly, solo-learn and the official SwAV feed training. Same crop sizes, counts, scales and
augmentations (SwAV preset: flip, colour jitter 0.8 with hue, grayscale; blur on 224-px crops).

    python benchmarks/bench_views.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from ssl_zoo.data.views import make_views, swav_views


def ours_rate(images: torch.Tensor, spec, device: str, batch: int, seconds: float) -> float:
    x = images.to(device)
    make_views(x[:batch], spec)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        i = (done // batch * batch) % max(1, len(x) - batch)
        make_views(x[i:i + batch], spec)
        if device == "cuda":
            torch.cuda.synchronize()
        done += batch
    return done / (time.perf_counter() - start)


def lightly_rate(images: np.ndarray, sizes, counts, scales_min, scales_max, blur: float,
                 batch: int, seconds: float) -> float:
    from lightly.transforms import SwaVTransform
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    transform = SwaVTransform(crop_sizes=sizes, crop_counts=counts, crop_min_scales=scales_min,
                              crop_max_scales=scales_max, cj_prob=0.8, cj_strength=1.0,
                              cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8, cj_hue=0.2,
                              random_gray_scale=0.2, gaussian_blur=blur)

    class Crops(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i]))

    loader = DataLoader(Crops(), batch_size=batch, shuffle=True, num_workers=2,
                        persistent_workers=True, drop_last=True)
    done, start, it = 0, None, iter(loader)
    while True:
        try:
            views = next(it)
        except StopIteration:
            it = iter(loader)
            views = next(it)
        if start is None:  # the first batch pays for starting the workers
            start = time.perf_counter()
            continue
        done += views[0].shape[0]
        if time.perf_counter() - start >= seconds:
            return done / (time.perf_counter() - start)


def cifar_images(n: int) -> np.ndarray:
    from ssl_zoo.data.sources import open_source

    x = open_source("demo").train.images[:n]
    return x.permute(0, 2, 3, 1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    seconds = 3.0 if args.quick else 10.0
    rows = []
    cifar = cifar_images(2000)
    spec = swav_views(32, n_local=4)
    ours = ours_rate(torch.from_numpy(cifar).permute(0, 3, 1, 2).contiguous(), spec,
                     args.device, 256, seconds)
    ref = lightly_rate(cifar, (32, 16), (2, 4), (0.14, 0.05), (1.0, 0.14), 0.0, 256, seconds)
    rows.append({"input": "32x32 (CIFAR, demo set)", "crops": "2x32 + 4x16",
                 "ours_images_per_s": ours, "lightly_images_per_s": ref, "ratio": ours / ref})
    print(rows[-1], flush=True)
    # ImageNet-size: demo images upsampled to 256 px (content does not change the cost)
    big = torch.nn.functional.interpolate(torch.from_numpy(cifar[:256]).permute(0, 3, 1, 2)
                                          .float(), size=256, mode="bilinear")
    big = big.round().clamp(0, 255).to(torch.uint8)
    spec = swav_views(224, n_local=6)
    ours = ours_rate(big, spec, args.device, 32, seconds)
    ref = lightly_rate(big.permute(0, 2, 3, 1).numpy(), (224, 96), (2, 6), (0.14, 0.05),
                       (1.0, 0.14), 0.5, 32, seconds)
    rows.append({"input": "256x256", "crops": "2x224 + 6x96", "ours_images_per_s": ours,
                 "lightly_images_per_s": ref, "ratio": ours / ref})
    print(rows[-1], flush=True)
    write_result("views" if args.device == "cpu" else f"views_{args.device}", {
        "what": ("images/s of view generation; ours: make_views on uint8 batches in one process "
                 f"on {args.device}; lightly: SwaVTransform through a DataLoader with 2 workers; "
                 "SwAV preset (flip, jitter 0.8 incl. hue, grayscale 0.2, blur 0.5 at 224 px)"),
        "device": args.device, "rows": rows})


if __name__ == "__main__":
    main()
