"""The canvas folder images are decoded into: sized from the crops (``canvas=auto``), so a small
crop of a real-size photo reads its source pixels at torchvision's resolution; older stores and
run configs still load."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssl_zoo import assemble
from ssl_zoo.data import prepared as P
from ssl_zoo.data import views as V
from ssl_zoo.data.decode import decode_image
from ssl_zoo.data.folders import canvas_for_views, crop_canvas, folder_canvas, run_canvas
from ssl_zoo.errors import ConfigError

SWAV_IMAGENET = V.ViewSpec(groups=[V.CropGroup(count=2, size=224, scale=(0.14, 1.0)),
                                   V.CropGroup(count=6, size=96, scale=(0.05, 0.14))])


def test_canvas_size_against_a_hand_computation():
    # 224 / sqrt(0.14) = 224 / 0.374166 = 598.66 -> 599; 96 / sqrt(0.05) = 96 / 0.223607 =
    # 429.33 -> 430; 32 / sqrt(0.25) = 64 exactly; 32 / sqrt(0.14) = 85.52 -> 86
    assert [crop_canvas(224, 0.14), crop_canvas(96, 0.05), crop_canvas(32, 0.25),
            crop_canvas(32, 0.14)] == [599, 430, 64, 86]
    assert canvas_for_views(SWAV_IMAGENET, 224) == 599  # the global crops ask for the most
    assert P.DEFAULT_CANVAS == 599
    # crops of the whole image need no more than the evaluation canvas (256 for 224)
    whole = V.ViewSpec(groups=[V.CropGroup(count=2, size=224, scale=(1.0, 1.0))])
    assert canvas_for_views(whole, 224) == 256 == folder_canvas(224)
    assert run_canvas("eval", SWAV_IMAGENET, 224) == 256
    assert run_canvas(320, SWAV_IMAGENET, 224) == 320


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 600), scale=st.floats(0.005, 1.0))
def test_canvas_is_the_smallest_side_whose_smallest_crop_spans_the_crop_size(size, scale):
    c = crop_canvas(size, scale)
    assert math.sqrt(scale) * c >= size * (1 - 1e-9)  # the smallest crop spans >= size px
    assert math.sqrt(scale) * (c - 1) < size  # and one pixel less would not


def test_source_pixels_per_output_pixel_by_hand():
    """The issue's example: a 0.14-area crop of a 500x375 photo (162 x 162 px) read into 224."""
    box, hw = torch.tensor([[10.0, 20.0, 162.0, 162.0]]), torch.tensor([[375, 500]])
    torchvision = V.source_pixels_per_output(box, hw, 224)
    old = V.source_pixels_per_output(box, hw, 224, canvas=256)
    new = V.source_pixels_per_output(box, hw, 224, canvas=599)
    assert torchvision.tolist() == [[162 / 224, 162 / 224]]
    # 162 x 256 / 375 = 110.6 rows, 162 x 256 / 500 = 82.9 columns of the 256-px canvas
    assert old[0].tolist() == pytest.approx([162 * 256 / 375 / 224, 162 * 256 / 500 / 224])
    assert new.tolist() == torchvision.tolist()  # 599 >= 500: every original pixel is there


def _grating(h: int, w: int, period_px: float) -> np.ndarray:
    """uint8 (h, w, 3): a fine 2-D sine grating (period ``period_px`` original pixels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127.5 + 100 * np.sin(2 * np.pi * xx / period_px) * np.sin(2 * np.pi * yy / period_px)
    return np.repeat(img[..., None], 3, 2).round().astype(np.uint8)


def test_a_small_crop_of_a_photo_reads_its_pixels_at_torchvisions_resolution(tmp_path):
    """One known box (0.14 of a 500x375 photo, 162 x 162 px, into 224 px) of a grating of
    period 6 px, cut from the decoded canvas as the views cut it, against torchvision's
    ``resized_crop`` of the original: at the auto canvas (599) the crop keeps >= 0.85 of
    torchvision's contrast and is within 0.02 of it on average; at the old 256-px canvas it
    keeps 0.41 (the grating's period is ~3 canvas pixels there, at the edge of what it holds)."""
    arr = _grating(375, 500, 6.0)
    Image.fromarray(arr).save(tmp_path / "photo.png")
    original = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    top, left, side = 50, 70, 162
    ref = TF.resized_crop(original, top, left, side, side, [224, 224], antialias=True)
    box = torch.tensor([[top, left, side, side]], dtype=torch.float32)
    kept = {}
    for canvas in (canvas_for_views(SWAV_IMAGENET, 224), 256):
        image, hw = decode_image(tmp_path / "photo.png", canvas)
        assert hw == (375, 500)
        boxes = V.canvas_boxes(box, torch.tensor([hw]), canvas, canvas)
        out = V.roi_resize(image[None].float() / 255, torch.zeros(1), boxes, 224)[0]
        kept[canvas] = (float(out.std() / ref.std()), float((out - ref).abs().mean()))
    assert kept[599][0] >= 0.85 and kept[599][1] <= 0.02, kept
    assert kept[256][0] <= 0.5 and kept[256][1] >= 0.05, kept  # what the old canvas read


def _images(root, shapes=((30, 40), (24, 24), (40, 20))):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i, (h, w) in enumerate(shapes):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


def _resolve(dataset, *sets):
    return assemble.resolve({"dataset": dataset, "image_size": 24},
                            ["method.num_prototypes=4", *sets], "swav")


def test_a_folder_run_decodes_into_the_canvas_its_crops_ask_for(tmp_path):
    folder = _images(tmp_path / "imgs")
    run = _resolve(f"folder:{folder}")  # SwAV at 24 px: 2 x 24 at scale >= 0.14
    assert run.config.canvas == "auto" and run.view_spec.groups[0].scale[0] == 0.14
    want = crop_canvas(24, 0.14)  # ceil(24 / 0.3742) = 65
    assert want == 65
    for ds in (run.data.train, run.data.test):
        assert ds.canvas_size == want
        assert ds.load(torch.arange(2)).shape == (2, 3, want, want)
    assert _resolve(f"folder:{folder}", "canvas=eval").data.train.canvas_size == \
        folder_canvas(24)
    assert _resolve(f"folder:{folder}", "canvas=40").data.test.canvas_size == 40
    with pytest.raises(ConfigError, match="canvas must be auto, eval or a side in px"):
        _resolve(f"folder:{folder}", "canvas=huge")
    with pytest.raises(ConfigError, match="canvas must be"):
        _resolve(f"folder:{folder}", "canvas=0")


def test_a_store_with_a_smaller_canvas_loads_and_says_so_in_one_line(tmp_path):
    folder = _images(tmp_path / "imgs")
    P.prepare(f"folder:{folder}", tmp_path / "store", canvas=27, workers=0,
              show_progress=False)  # the canvas stores were made with before: folder_canvas
    with pytest.warns(UserWarning) as caught:
        run = _resolve(f"prepared:{tmp_path / 'store'}")
    notes = [str(w.message) for w in caught if "canvas" in str(w.message)]
    assert len(notes) == 1 and "\n" not in notes[0], notes  # once for all splits, one line
    assert "its canvas is 27 px, the crops ask for 65 px" in notes[0]
    assert "--canvas 65" in notes[0]
    assert run.data.train.canvas_size == 27  # it still trains, from what the store holds
    assert run.data.train.load(torch.arange(2)).shape == (2, 3, 27, 27)
    with warnings.catch_warnings():  # accepted explicitly, or enough pixels: nothing said
        warnings.simplefilter("error")
        _resolve(f"prepared:{tmp_path / 'store'}", "canvas=27")
        P.prepare(f"folder:{folder}", tmp_path / "big", canvas=65, workers=0,
                  show_progress=False)
        assert _resolve(f"prepared:{tmp_path / 'big'}").data.train.canvas_size == 65


def test_a_run_made_before_the_canvas_setting_resumes_at_its_own_canvas(tmp_path):
    folder = _images(tmp_path / "imgs")
    saved = _resolve(f"folder:{folder}").summary()
    del saved["canvas"]  # a config.json written before `canvas` existed
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(saved))
    run = assemble.resume(run_dir)
    assert run.config.canvas == "eval"
    assert run.data.train.canvas_size == folder_canvas(24)  # what it was trained on
