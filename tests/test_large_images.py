"""The README's large-image example (SwAV on an image folder) trains on the paper's crops,
2x224 + 6x96, cut from whole non-square images, not from a centre square."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from ssl_zoo.cli import main
from ssl_zoo.data import views as V

SHAPES = [(375, 500), (500, 375), (240, 480)]


def test_readme_large_image_example_trains_on_2x224_and_6x96_crops_of_whole_images(
        tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(8):
        h, w = SHAPES[i % len(SHAPES)]
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"c{i % 2}" / f"{i}.jpg", quality=80)
    seen = []
    make_views = V.make_views

    def recording(images, spec, generator=None, sizes=None):
        views = make_views(images, spec, generator, sizes)
        seen.append((images.shape, sizes, [g.shape for g in views.groups]))
        return views

    monkeypatch.setattr("ssl_zoo.train.make_views", recording)
    run = tmp_path / "run"
    # the README's flags (image_size=224), shrunk where they do not touch the crops; crops in
    # the step, as on the README's GPUs (a CPU run makes the same ones in its loader workers:
    # tests/data/test_worker_views.py)
    assert main(["train", "--method", "swav", "--dataset", f"folder:{tmp_path / 'imgs'}",
                 "--backbone", "convnet", "--set", "image_size=224", "--set",
                 "train.views_in=step",
                 "--batch-size", "4", "--set", "method.num_prototypes=4", "--set",
                 "train.max_steps=2", "--epochs", "1", "--no-eval", "--no-progress",
                 "--out", str(run)]) == 0
    info = json.loads((run / "run_info.json").read_text())
    assert info["canvas_px"] == 599
    groups = info["view_spec"]["groups"]
    assert [(g["count"], g["size"]) for g in groups] == [(2, 224), (6, 96)]
    assert [tuple(g["scale"]) for g in groups] == [(0.14, 1.0), (0.05, 0.14)]
    # the trainer's contract check (a dry step on the first batch's crops), then the 2 iterations
    assert len(seen) == 3
    for shape, sizes, crops in seen:
        # the whole image on the canvas its crops ask for (canvas=auto: 224 px at scale
        # >= 0.14 needs ceil(224 / sqrt(0.14)) = 599)
        assert shape == (4, 3, 599, 599)
        assert set(map(tuple, sizes.tolist())) <= set(SHAPES)  # boxes drawn in the originals
        assert crops == [torch.Size([8, 3, 224, 224]), torch.Size([24, 3, 96, 96])]
