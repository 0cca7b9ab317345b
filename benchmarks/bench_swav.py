"""SwAV from ssl-zoo against SwAV assembled from lightly's public pieces, same budget.

Variants, each in its own subprocess on the same data (first N images of the shared CIFAR-10
subset, through our ``npz:`` source), backbone (small ConvNet), optimiser (Adam, the same
warm-up + cosine schedule), prototypes K, epsilon and crops:

- ``ssl-zoo 2x32+4x16``: our defaults (multi-crop);
- ``ssl-zoo 2x32``: the same without local crops;
- ``lightly 2x32+4x16``: lightly's ``SwaVLoss``, ``SwaVProjectionHead``, ``SwaVPrototypes`` and
  ``SwaVTransform`` (per-image PIL augmentation in a DataLoader with 2 workers), the training
  loop of lightly's SwAV example.

Every backbone is evaluated by our harness (weighted kNN on the full 10,000 test images with the
N training images as memory; both protocols). images/s counts training images per second of
training (data loading and augmentation included; evaluation excluded).

    python benchmarks/bench_swav.py [--n-train 5000] [--epochs 10] [--npz PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_NPZ, write_result  # noqa: E402


def subset_npz(src: Path, n_train: int, out: Path) -> Path:
    d = np.load(src)
    np.savez(out, x_train=d["x_train"][:n_train], y_train=d["y_train"][:n_train],
             x_test=d["x_test"], y_test=d["y_test"], classes=d["classes"])
    return out


def prepared_subset(src: Path, n_train: int, out_dir: Path) -> Path:
    """``out_dir/subset<N>.npz`` (the first N training images of ``src``), made once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / f"subset{n_train}.npz"
    if not npz.exists():
        subset_npz(src, n_train, npz)
    return npz


def ours(npz: Path, epochs: int, n_local: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ssl_zoo", "train", "--method", "swav", "--dataset",
           f"npz:{npz}", "--epochs", str(epochs), "--out", str(out), "--no-progress",
           "--set", f"views.groups.1.count={n_local}", "--set", "eval.linear=false",
           "--set", "eval.pictures=false", "--set", "eval.clustering=false",
           "--set", "eval.baseline=false", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "train_summary.json").read_text())
    ev = json.loads((out / "eval.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    return {"images_per_s": summary["images_per_s"], "train_wall_s": summary["wall_s"],
            "final_loss": summary["final_loss"], "knn": ev["knn"], "config": cfg}


def lightly_child(npz: Path, epochs: int, n_local: int, cfg: dict) -> dict:
    """Train with lightly's pieces; evaluate the backbone with our harness."""
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
    from lightly.transforms import SwaVTransform
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.config import from_dict
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.data.views import ViewSpec
    from ssl_zoo.evaluation.features import extract_features
    from ssl_zoo.evaluation.run import knn_both
    from ssl_zoo.optim import warmup_cosine
    from ssl_zoo_methods.swav import SwAVConfig

    m, t = from_dict(SwAVConfig, cfg["method_config"]), cfg["train"]
    views = cfg["views"]
    strength = views["groups"][0]["brightness"] / 0.8  # the colour strength of our run
    k, eps = m.num_prototypes, m.epsilon
    torch.manual_seed(t["seed"])
    data = open_source(f"npz:{npz}")
    images = data.train.images.permute(0, 2, 3, 1).numpy()  # NHWC uint8

    transform = SwaVTransform(
        crop_sizes=(32, 16), crop_counts=(2, n_local), crop_min_scales=(0.14, 0.05),
        crop_max_scales=(1.0, 0.14), cj_prob=0.8, cj_strength=strength, cj_bright=0.8,
        cj_contrast=0.8, cj_sat=0.8, cj_hue=0.2, random_gray_scale=0.2, gaussian_blur=0.0,
        normalize={"mean": list(views["mean"]), "std": list(views["std"])})

    class Crops(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i]))

    loader = DataLoader(Crops(), batch_size=t["batch_size"], shuffle=True, drop_last=True,
                        num_workers=2, persistent_workers=True)
    backbone, dim = build_backbone(cfg["backbone"], image_size=32)
    head = SwaVProjectionHead(dim, m.hidden_dim or dim, m.feat_dim)
    prototypes = SwaVPrototypes(m.feat_dim, k, n_steps_frozen_prototypes=0)
    criterion = SwaVLoss(temperature=m.temperature, sinkhorn_epsilon=eps,
                         sinkhorn_iterations=m.sinkhorn_iterations)
    params = [*backbone.parameters(), *head.parameters(), *prototypes.parameters()]
    peak = t["lr_per_256"] * t["batch_size"] / 256
    opt = torch.optim.Adam(params, lr=peak, weight_decay=t["weight_decay"])
    steps_per_epoch = len(loader)
    total = steps_per_epoch * epochs
    warm = int(round(t["warmup_epochs"] * steps_per_epoch))
    step, seen, losses = 0, 0, []
    start = time.perf_counter()
    for _ in range(epochs):
        for views in loader:
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, total, warm, peak, peak * t["final_lr_ratio"])
            prototypes.normalize()
            outs = []
            for v in views:
                z = torch.nn.functional.normalize(head(backbone(v)), dim=1)
                outs.append(prototypes(z, step))
            loss = criterion(outs[:2], outs[2:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            seen += views[0].shape[0]
            losses.append(float(loss))
    wall = time.perf_counter() - start
    spec = ViewSpec(mean=tuple(views["mean"]), std=tuple(views["std"]))
    common = dict(image_size=32, mean=spec.mean, std=spec.std, device=torch.device("cpu"))
    ftr = extract_features(backbone, data.train, **common)
    fte = extract_features(backbone, data.test, **common)
    return {"images_per_s": seen / wall, "train_wall_s": wall, "final_loss": losses[-1],
            "knn": knn_both(ftr, data.train.labels, fte, data.test.labels)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", type=Path, default=SHARED_NPZ)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--skip-lightly", action="store_true")
    p.add_argument("--set", action="append", default=[], help="extra ssl-zoo --set overrides")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # npz, config.json
    args = p.parse_args()
    if args.child:
        cfg = json.loads(Path(args.child[1]).read_text())
        print(json.dumps(lightly_child(Path(args.child[0]), args.epochs, args.n_local, cfg)))
        return
    if not args.npz.is_file():
        sys.exit(f"data file not found: {args.npz} (pass --npz)")
    extra = [x for s in args.set for x in ("--set", s)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npz = subset_npz(args.npz, args.n_train, tmp / "subset.npz")
        multi = ours(npz, args.epochs, args.n_local, tmp / "multi", extra)
        rows[f"ssl-zoo 2x32+{args.n_local}x16"] = multi
        print("ssl-zoo multi-crop", {k: v for k, v in multi.items() if k != "config"}, flush=True)
        two = ours(npz, args.epochs, 0, tmp / "two", extra)
        rows["ssl-zoo 2x32"] = two
        print("ssl-zoo 2 crops", {k: v for k, v in two.items() if k != "config"}, flush=True)
        if not args.skip_lightly:
            cfg_path = tmp / "multi" / "config.json"
            out = subprocess.run([sys.executable, __file__, "--child", str(npz), str(cfg_path),
                                  "--epochs", str(args.epochs), "--n-local", str(args.n_local)],
                                 capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONWARNINGS="ignore"))
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            rows[f"lightly 2x32+{args.n_local}x16"] = json.loads(out.stdout.splitlines()[-1])
            print("lightly", rows[f"lightly 2x32+{args.n_local}x16"], flush=True)
    cfg = multi.pop("config")
    two.pop("config")
    result = {
        "what": (f"SwAV, small ConvNet, first {args.n_train} images of the shared CIFAR-10 subset,"
                 f" {args.epochs} epochs, batch {cfg['train']['batch_size']}, Adam lr_per_256 "
                 f"{cfg['train']['lr_per_256']} warm-up {cfg['train']['warmup_epochs']} epoch + "
                 f"cosine, SwAV config {cfg['method_config'] or 'defaults'}; kNN on the "
                 f"10,000 test images with the {args.n_train} training images as memory"),
        "ssl_zoo_config": cfg, "rows": rows}
    lk = f"lightly 2x32+{args.n_local}x16"
    if lk in rows:
        result["speedup_vs_lightly"] = multi["images_per_s"] / rows[lk]["images_per_s"]
        result["knn_k20_delta_vs_lightly"] = (multi["knn"]["k20_t0.07"]["top1"]
                                              - rows[lk]["knn"]["k20_t0.07"]["top1"])
    write_result("swav_vs_lightly", result)


if __name__ == "__main__":
    main()
