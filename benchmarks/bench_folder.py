"""Real-size JPEG folders to SwAV crops ready for the step: our folder source, our prepared
store, and torchvision ImageFolder + a per-image SwAV transform in a DataLoader.

The folder is made here, in a temp dir (nothing is committed): the first ``--images`` images of
the shared CIFAR-10 subset (``_common.SHARED_NPZ``) upscaled to 500x375 (bicubic) and saved as
JPEG at quality 90, one sub-folder per class. Every side makes 2x224 + 6x96 crops with the SwAV
preset (flip, colour jitter 0.8/0.8/0.8/0.2 p=0.8, grayscale 0.2, blur p=0.5) and uses the same
number of DataLoader workers (``--workers``):

* ours, folder: ``BatchLoader`` over ``folder:`` (workers decode at reduced size into a 256-px
  canvas, persistent, prefetching), then ``make_views`` on the batch with its original sizes, in
  the main process;
* ours, prepared: the same from ``prepared:`` (``ssl-zoo prepare`` at canvas 256, timed apart);
* ours, folder / prepared with the views made in the workers (``train.views_in=workers``, what
  a CPU run does by default): each worker loads its batch and runs ``make_views`` on it with
  one thread, the step's seed for that batch, as the per-image transforms run in the workers
  on the torchvision side;
* torchvision: ``ImageFolder`` + lightly's ``SwaVTransform`` (RandomResizedCrop 224/96 of the
  decoded original, then the per-image PIL/tensor ops), in a ``DataLoader`` with persistent
  workers: the path of the official SwAV code, lightly and solo-learn.

``--train-steps N`` adds a CPU training run per side of ``train.views_in`` (SwAV, the small
ConvNet, the same store, batch and workers, ``N`` steps, alternating, ``--rounds`` times): the
trainer's own images/s over its log windows after the first (worker start-up left out), to
show what making the crops in the workers does to a CPU run's speed, where the step competes
with the workers for the same cores.

Each side is timed over whole passes of the folder (from starting the pass, so no batch is
ready in advance), ``--rounds`` times, alternating, after one untimed pass each (workers started,
files in the page cache); the median images/s is kept.

    python benchmarks/bench_folder.py                    # 400 images, 2 workers, 2 rounds
    python benchmarks/bench_folder.py --images 2000 --workers 8 --out /tmp/res
    python benchmarks/bench_folder.py --train-steps 20       # also the CPU training check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_NPZ, write_result  # noqa: E402

from ssl_zoo.data.loader import BatchLoader, WorkerViews  # noqa: E402
from ssl_zoo.data.prepared import prepare  # noqa: E402
from ssl_zoo.data.sources import open_source  # noqa: E402
from ssl_zoo.data.views import IMAGENET_MEAN, IMAGENET_STD, make_views, multi_crop  # noqa: E402

PHOTO_SIZE = (500, 375)
"""(width, height) of the generated photos."""
QUALITY = 90
CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_folder(npz: Path, root: Path, n: int) -> None:
    """``n`` CIFAR-10 images upscaled to 500x375 JPEGs under ``root/<class>/``."""
    from PIL import Image

    with np.load(npz) as f:
        x, y = f["x_train"][:n], f["y_train"][:n]
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"class{int(label)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize(PHOTO_SIZE, Image.BICUBIC).save(d / f"{i:05d}.jpg",
                                                                    quality=QUALITY)


class OursLoader:
    """Our loader (persistent workers) and ``make_views`` with the batch's original sizes: in
    this process after loading (the GPU path's order) or, with ``in_workers``, in the workers."""

    def __init__(self, spec_str: str, spec, batch: int, workers: int, in_workers: bool = False,
                 device: torch.device = CPU, decode_on_device: bool = False):
        ds = open_source(spec_str, image_size=224).train
        views = WorkerViews(spec, seed=0) if in_workers else None
        self.loader = BatchLoader(ds, batch, seed=0, num_workers=workers, views=views,
                                  decode_on=device if decode_on_device else None,
                                  pin_memory=device.type == "cuda" and not decode_on_device)
        self.spec, self.in_workers, self.device = spec, in_workers, device
        self.gen = torch.Generator(device).manual_seed(0)

    def rate(self) -> tuple[float, int]:
        """Images/s of one whole pass, from starting the iteration to the last crops."""
        done, start = 0, time.perf_counter()
        for images, index, sizes in self.loader.iterate():
            if not self.in_workers:
                make_views(images.to(self.device, non_blocking=True), self.spec, self.gen,
                           sizes.to(self.device, non_blocking=True))
            done += index.shape[0]
        sync(self.device)
        return done / (time.perf_counter() - start), done

    def close(self) -> None:
        self.loader.close()


class TorchvisionLoader:
    """ImageFolder + lightly's SwaVTransform per image, persistent DataLoader workers."""

    def __init__(self, root: Path, batch: int, workers: int, device: torch.device = CPU):
        from lightly.transforms import SwaVTransform
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder

        transform = SwaVTransform(
            crop_sizes=(224, 96), crop_counts=(2, 6), crop_min_scales=(0.14, 0.05),
            crop_max_scales=(1.0, 0.14), hf_prob=0.5, cj_prob=0.8, cj_strength=1.0,
            cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8, cj_hue=0.2, random_gray_scale=0.2,
            gaussian_blur=0.5, sigmas=(0.1, 2.0),
            normalize={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
        self.loader = DataLoader(ImageFolder(str(root), transform=transform), batch_size=batch,
                                 shuffle=True, drop_last=True, num_workers=workers,
                                 persistent_workers=workers > 0,
                                 pin_memory=device.type == "cuda")
        self.device = device

    def rate(self) -> tuple[float, int]:
        """Images/s of one whole pass, from starting the iteration to the last crops (on the
        device, when it is a GPU: ready for the step there)."""
        done, start = 0, time.perf_counter()
        for views, _ in self.loader:
            if self.device.type != "cpu":
                views = [v.to(self.device, non_blocking=True) for v in views]
            done += views[0].shape[0]
        sync(self.device)
        return done / (time.perf_counter() - start), done

    def close(self) -> None:
        self.loader = None  # persistent workers stop with their DataLoader


def train_rate(store: Path, views_in: str, steps: int, batch: int, workers: int,
               out: Path) -> float:
    """Median images/s of a CPU SwAV run's log windows after the first (``steps`` steps)."""
    from ssl_zoo.assemble import resolve
    from ssl_zoo.train import Trainer

    log = max(1, steps // 5)
    run = resolve({}, ["method=swav", f"dataset=prepared:{store}", "backbone=convnet",
                       "image_size=224", "method.num_prototypes=100",
                       f"train.batch_size={batch}", "train.epochs=1000",
                       f"train.max_steps={steps}", f"train.num_workers={workers}",
                       f"train.views_in={views_in}", "train.device=cpu", "eval.enabled=false",
                       f"train.log_every_iters={log}", "train.logger=jsonl"])
    result = Trainer(run, out, show_progress=False).fit()
    windows = [r["images_per_s"] for r in result.history if "images_per_s" in r][1:]
    return statistics.median(windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=0,
                   help="also time CPU training with the crops made in the step vs the workers")
    p.add_argument("--device", default="cpu",
                   help="cuda: crops made on the GPU (folder decoded in the workers or by "
                        "nvJPEG, prepared store), torchvision's crops copied there; results in "
                        "folder_<device>.json")
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for folder.json (default benchmarks/results)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type != "cpu" and args.train_steps:
        p.error("--train-steps is the CPU training check; leave it out with --device")
    spec = multi_crop(224, 96, 6, (0.14, 1.0), (0.05, 0.14), 1.0, 0.5, 0.0)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root, store = Path(tmp) / "photos", Path(tmp) / "store"
        make_folder(args.npz, root, args.images)
        folder_bytes = sum(f.stat().st_size for f in root.rglob("*.jpg"))
        t0 = time.perf_counter()
        prepare(f"folder:{root}", store, canvas=256, workers=args.workers, show_progress=False)
        prepare_s = time.perf_counter() - t0
        store_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        if device.type == "cpu":
            sides = {
                "folder": OursLoader(f"folder:{root}", spec, args.batch, args.workers),
                "prepared": OursLoader(f"prepared:{store}", spec, args.batch, args.workers),
                "folder_workers": OursLoader(f"folder:{root}", spec, args.batch, args.workers,
                                             in_workers=True),
                "prepared_workers": OursLoader(f"prepared:{store}", spec, args.batch,
                                               args.workers, in_workers=True),
                "torchvision": TorchvisionLoader(root, args.batch, args.workers)}
        else:
            sides = {
                "folder": OursLoader(f"folder:{root}", spec, args.batch, args.workers,
                                     device=device),
                "folder_device_decode": OursLoader(f"folder:{root}", spec, args.batch,
                                                   args.workers, device=device,
                                                   decode_on_device=True),
                "prepared": OursLoader(f"prepared:{store}", spec, args.batch, args.workers,
                                       device=device),
                "torchvision": TorchvisionLoader(root, args.batch, args.workers, device)}
        for side in sides.values():  # warm-up pass: workers started, files in the page cache
            side.rate()
        rates: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.rounds):
            for k, side in sides.items():
                rates[k].append(side.rate()[0])
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.1f} img/s"
                                                 for k, v in rates.items()), flush=True)
        for side in sides.values():  # their worker processes stop before training starts
            side.close()
        train: dict[str, list[float]] = {"step": [], "workers": []}
        for r in range(args.rounds if args.train_steps else 0):
            for where in train:
                train[where].append(train_rate(store, where, args.train_steps, args.batch,
                                               args.workers, Path(tmp) / f"run_{where}_{r}"))
            print(f"training round {r + 1}: " + ", ".join(
                f"views in the {k} {v[-1]:,.1f} img/s" for k, v in train.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    names = {
        "folder": "ours: folder (reduced-size decode in workers, batched views)",
        "prepared": "ours: prepared store (memory map, batched views)",
        "folder_workers": "ours: folder, views in the workers (CPU runs' default)",
        "prepared_workers": "ours: prepared store, views in the workers (CPU runs' default)",
        "folder_device_decode": "ours: folder, JPEGs decoded on the device (train.decode=device)",
        "torchvision": "torchvision ImageFolder + lightly SwaVTransform per image",
    }
    if device.type != "cpu":
        names = {k: v.replace("batched views", f"views on {device.type}")
                 + (f", crops copied to {device.type}" if k == "torchvision" else "")
                 for k, v in names.items()}
    rows = [{"pipeline": names[k], "images_per_s": med[k]} for k in rates]
    for row in rows:
        row["vs_torchvision"] = row["images_per_s"] / med["torchvision"]
    name = "folder" if device.type == "cpu" else f"folder_{device.type}"
    write_result(name, {
        "what": (f"images/s from {args.images} JPEGs of 500x375 (CIFAR-10 upscaled, quality "
                 f"{QUALITY}) to 2x224 + 6x96 SwAV crops ready for the step (normalised float "
                 f"tensors) on {device.type}, batch {args.batch}, {args.workers} DataLoader "
                 f"workers each, "
                 f"median of {args.rounds} alternating whole passes after a warm-up pass; "
                 f"ours runs make_views in the main process with torch's default threads (the GPU "
                 f"path's order: on a GPU it runs on the device), or in each worker with one "
                 f"thread (views in the workers: a CPU run's default); prepare "
                 f"(canvas 256) took {prepare_s:.1f} s, not counted"),
        "images": args.images, "workers": args.workers, "batch": args.batch,
        "rounds": args.rounds, "prepare_s": prepare_s, "folder_mib": folder_bytes / 2**20,
        "store_mib": store_bytes / 2**20, "rounds_images_per_s": rates,
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "rows": rows,
        **({"training": {
            "what": (f"CPU training, SwAV 2x224 + 6x96, small ConvNet, batch {args.batch}, "
                     f"{args.workers} workers, prepared store, {args.train_steps} steps per run, "
                     f"{args.rounds} alternating runs per side; the trainer's images/s per log "
                     f"window after the first, median"),
            "rounds_images_per_s": train,
            "views_in_step": statistics.median(train["step"]),
            "views_in_workers": statistics.median(train["workers"]),
        }} if args.train_steps else {}),
    }, args.out)


if __name__ == "__main__":
    main()
