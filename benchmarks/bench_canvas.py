"""Crops at full resolution: what the canvas folder images are decoded into keeps, and costs.

    python benchmarks/bench_canvas.py [--draws 4000] [--pixel-draws 48] [--canvases 256,448,auto]

Real-size synthetic images of typical ImageNet sizes (500x375, 640x480, 333x500, 1024x768; JPEG
quality 90 and PNG) are decoded as a folder source decodes them (``decode_image``) into square
canvases of each side asked for (256: the evaluation canvas every folder and store used before;
``auto``: ``canvas=auto`` for SwAV's ImageNet crops, 2x224 at scale (0.14, 1) + 6x96 at (0.05,
0.14), = 599). For many crop boxes drawn as our views draw them (in the original's geometry,
as torchvision's ``RandomResizedCrop`` on the original):

* **source pixels per output pixel** (``views.source_pixels_per_output``, per axis, geometric
  mean of the two): torchvision reads the box's extent in original pixels; ours its extent on
  the canvas, but no more than the original pixels it covers. Given raw and capped at 1 (a
  224-px output shows at most one source pixel per pixel: torchvision's extra source pixels on
  a large original are averaged away), as ours / torchvision, mean over the draws;
* **pixels against torchvision's** on a fine grating (period 6 original pixels): our crop (cut
  from the decoded canvas with the views' ``roi_align``) against torchvision's
  ``resized_crop`` of the decoded original at the same box, mean over fewer draws: the
  correlation of the two crops' pixels (1: the same picture) and our standard deviation over
  torchvision's (contrast kept; above 1 where aliasing adds some): what the two resamplings
  (original -> canvas -> crop) keep of detail that torchvision's one keeps;
* **costs**: the store's bytes per image (``ssl-zoo prepare`` of a folder of these images at
  each canvas, from its manifest), the decode time per image and the crop time per batch of
  canvases (2x224 + 6x96, batch 8), each as a ratio to the 256-px canvas, measured alternating
  in one process on one thread.

Writes ``benchmarks/results/canvas.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from ssl_zoo.data import views as V  # noqa: E402
from ssl_zoo.data.decode import decode_image  # noqa: E402
from ssl_zoo.data.folders import canvas_for_views, folder_canvas  # noqa: E402
from ssl_zoo.data.prepared import prepare  # noqa: E402

SIZES = [(375, 500), (480, 640), (500, 333), (768, 1024)]
"""(h, w) of the test originals: ImageNet's most common sizes, and a large one."""
SWAV = V.ViewSpec(groups=[V.CropGroup(count=2, size=224, scale=(0.14, 1.0)),
                          V.CropGroup(count=6, size=96, scale=(0.05, 0.14))],
                  mean=V.IMAGENET_MEAN, std=V.IMAGENET_STD)
GRATING_PERIOD_PX = 6.0


def grating(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 (h, w, 3) grey: a 2-D sine grating of period GRATING_PERIOD_PX (nothing else, so
    a crop's standard deviation is the grating's contrast), its phase drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ph = rng.uniform(0, 2 * np.pi, 2)
    g = np.sin(2 * np.pi * xx / GRATING_PERIOD_PX + ph[0]) * \
        np.sin(2 * np.pi * yy / GRATING_PERIOD_PX + ph[1])
    return np.repeat((127.5 + 100 * g)[..., None], 3, 2).round().astype(np.uint8)


def write_images(root: Path) -> list[tuple[Path, str, tuple[int, int]]]:
    out = []
    for i, (h, w) in enumerate(SIZES):
        arr = grating(h, w, i)
        for fmt in ("jpg", "png"):
            d = root / "imgs" / f"c{i}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{h}x{w}.{fmt}"
            Image.fromarray(arr).save(path, **({"quality": 90} if fmt == "jpg" else {}))
            out.append((path, fmt, (h, w)))
    return out


def geometry(canvases: list[int], draws: int) -> list[dict]:
    """Source pixels per output pixel, ours / torchvision, per image size and crop group."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for h, w in SIZES:
        for gi, g in enumerate(SWAV.groups):
            hs, ws = torch.full((draws,), h), torch.full((draws,), w)
            boxes = V.draw_params(draws, hs, ws, g, torch.device("cpu"), gen).boxes
            sizes = torch.stack([hs, ws], 1)
            tv = V.source_pixels_per_output(boxes, sizes, g.size)
            row = {"image": f"{w}x{h}", "group": f"{g.count}x{g.size} scale {g.scale}",
                   "global": gi == 0,
                   "torchvision_src_px_per_out_px": float(tv.prod(1).sqrt().mean())}
            for c in canvases:
                ours = V.source_pixels_per_output(boxes, sizes, g.size, canvas=c)
                raw = (ours / tv).prod(1).sqrt()
                capped = (ours.clamp(max=1) / tv.clamp(max=1)).prod(1).sqrt()
                row[str(c)] = {"src_px_per_out_px": float(ours.prod(1).sqrt().mean()),
                               "vs_torchvision": float(raw.mean()),
                               "vs_torchvision_capped": float(capped.mean()),
                               "capped_below_0.9": float((capped < 0.9).double().mean())}
            rows.append(row)
    return rows


def contrast(images, canvases: list[int], draws: int) -> list[dict]:
    """Contrast of our global crops (cut from the decoded canvas) over torchvision's crop of
    the decoded original at the same boxes, per image and format."""
    g = SWAV.groups[0]
    gen = torch.Generator().manual_seed(1)
    rows = []
    for path, fmt, (h, w) in images:
        with Image.open(path) as im:
            original = TF.to_tensor(im.convert("RGB"))
        hs, ws = torch.full((draws,), h), torch.full((draws,), w)
        boxes = V.draw_params(draws, hs, ws, g, torch.device("cpu"), gen).boxes
        refs = [TF.resized_crop(original, *(int(v) for v in b), [g.size, g.size],
                                antialias=True) for b in boxes]
        row = {"image": f"{w}x{h}", "format": fmt}
        for c in canvases:
            canvas, hw = decode_image(path, c)
            assert hw == (h, w)
            cb = V.canvas_boxes(boxes, torch.stack([hs, ws], 1), c, c)
            source = canvas[None].float() / 255
            kept, corr = [], []
            for i in range(draws):
                out = V.roi_resize(source, torch.zeros(1), cb[i:i + 1], g.size)[0]
                kept.append(float(out.std() / refs[i].std()))
                a, b = out - out.mean(), refs[i] - refs[i].mean()
                corr.append(float((a * b).sum() / (a.norm() * b.norm())))
            row[str(c)] = {"contrast_kept": statistics.mean(kept),
                           "correlation": statistics.mean(corr)}
        rows.append(row)
    return rows


def store_bytes(root: Path, canvases: list[int]) -> dict[str, float]:
    """Bytes per image of a prepared store at each canvas (images + sizes + labels)."""
    out = {}
    for c in canvases:
        m = prepare(f"folder:{root / 'imgs'}", root / f"store{c}", canvas=c, workers=0,
                    show_progress=False)
        split = m["splits"]["train"]
        out[str(c)] = sum(f["bytes"] for f in split["files"].values()) / split["count"]
    return out


def costs(images, canvases: list[int], rounds: int) -> dict[str, dict[str, float]]:
    """Decode seconds per image and crop seconds per batch of 8, alternating canvases, as
    ratios to the first canvas (medians over ``rounds``)."""
    decode = {c: [] for c in canvases}
    crops = {c: [] for c in canvases}
    paths = [p for p, _, _ in images]
    batches = {}
    for c in canvases:
        ims, sz = zip(*(decode_image(p, c) for p in paths))
        batches[c] = (torch.stack(ims), torch.tensor(sz))
    for r in range(rounds):
        for c in (canvases if r % 2 == 0 else canvases[::-1]):
            t0 = time.perf_counter()
            for p in paths:
                decode_image(p, c)
            decode[c].append((time.perf_counter() - t0) / len(paths))
            t0 = time.perf_counter()
            V.make_views(batches[c][0], SWAV, torch.Generator().manual_seed(r), batches[c][1])
            crops[c].append(time.perf_counter() - t0)
    base = canvases[0]
    return {"decode_s_per_image": {str(c): statistics.median(decode[c]) for c in canvases},
            "decode_vs_first": {str(c): statistics.median(decode[c]) /
                                statistics.median(decode[base]) for c in canvases},
            "crops_s_per_batch8": {str(c): statistics.median(crops[c]) for c in canvases},
            "crops_vs_first": {str(c): statistics.median(crops[c]) /
                               statistics.median(crops[base]) for c in canvases}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=4000)
    p.add_argument("--pixel-draws", type=int, default=48)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--canvases", default="256,448,auto")
    args = p.parse_args()
    torch.set_num_threads(1)
    auto = canvas_for_views(SWAV, 224)
    canvases = [auto if c == "auto" else int(c) for c in args.canvases.split(",")]
    assert canvases[0] == folder_canvas(224), "the first canvas is the old one (256)"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = write_images(root)
        geo = geometry(canvases, args.draws)
        pix = contrast(images, canvases, args.pixel_draws)
        stored = store_bytes(root, canvases)
        cost = costs(images, canvases, args.rounds)
    glob = [r for r in geo if r["global"]]
    summary = {str(c): {
        "global_vs_torchvision": statistics.mean(r[str(c)]["vs_torchvision"] for r in glob),
        "global_vs_torchvision_capped": statistics.mean(
            r[str(c)]["vs_torchvision_capped"] for r in glob),
        "global_contrast_kept": statistics.mean(r[str(c)]["contrast_kept"] for r in pix),
        "global_correlation": statistics.mean(r[str(c)]["correlation"] for r in pix),
        "store_bytes_per_image": stored[str(c)],
        "decode_vs_256": cost["decode_vs_first"][str(c)],
        "crops_vs_256": cost["crops_vs_first"][str(c)]} for c in canvases}
    write_result("canvas", {
        "what": (f"global crops (2x224, scale (0.14, 1)) and local crops (6x96, (0.05, 0.14)) "
                 f"of {', '.join(f'{w}x{h}' for h, w in SIZES)} images: ours from a canvas "
                 f"of each side (auto = {auto}) vs torchvision's RandomResizedCrop on the "
                 f"original, {args.draws} boxes per image and group for the geometry, "
                 f"{args.pixel_draws} per image and format (JPEG q90, PNG) for the contrast of "
                 f"a period-{GRATING_PERIOD_PX:g}-px grating; store bytes from ssl-zoo prepare; "
                 f"decode and crop times alternating on one thread, median of {args.rounds}, "
                 f"as ratios to canvas 256"),
        "auto_canvas": auto, "canvases": canvases, "summary": summary,
        "geometry": geo, "contrast": pix, "costs": cost}, None)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
