"""Decoding folder JPEGs on the training device (``train.decode=device``: nvJPEG on CUDA),
checked here with the CPU as the device: the same sizes and nearly the same canvases as the
workers' PIL path and as torchvision's own decode + resize, EXIF-rotated and non-JPEG files
still decoded in the workers, bad files named or skipped, and a run end to end."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.cli import main
from ssl_zoo.data.decode import decode_image, decode_on_device, read_for_device
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import open_source
from ssl_zoo.errors import ConfigError, DataError

CPU = torch.device("cpu")
SHAPES = [(375, 500), (500, 250), (30, 40), (9, 7)]
"""(h, w): 4:3 larger than the canvas (PIL decodes it at reduced size), 1:2, small, tiny."""


def _smooth(h, w, seed):
    """A smooth colour image (JPEG keeps it well; resampling filters agree on it)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    r = np.random.default_rng(seed).uniform(0.5, 3, 6)
    img = np.stack([np.sin(r[0] * 6 * x + r[1] * 4 * y), np.cos(r[2] * 5 * y - r[3] * 3 * x),
                    np.sin(r[4] * 7 * (x + y)) * np.cos(r[5] * 2 * x)], -1)
    return ((img + 1) * 127.5).astype(np.uint8)


def _decode(paths, canvas=64):
    payloads = [read_for_device(p, canvas) for p in paths]
    ok, errors = torch.ones(len(paths), dtype=torch.bool), [""] * len(paths)
    images, sizes = decode_on_device(payloads, canvas, CPU, ok, errors)
    return images, sizes, ok, errors, payloads


def test_jpegs_decoded_on_the_device_match_torchvision_and_the_worker_path(tmp_path):
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    paths = []
    for i, (h, w) in enumerate(SHAPES):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(_smooth(h, w, i)).save(paths[-1], quality=95)
    images, sizes, ok, _, payloads = _decode(paths)
    assert bool(ok.all()) and all(isinstance(p, torch.Tensor) and p.ndim == 1 for p in payloads)
    for i, path in enumerate(paths):
        assert torch.equal(payloads[i], torch.frombuffer(bytearray(path.read_bytes()),
                                                         dtype=torch.uint8))
        assert tuple(sizes[i].tolist()) == SHAPES[i]
        # torchvision: its decoder, then its anti-aliased bilinear resize of the uint8 image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in torchvision >= 0.29
            full = decode_jpeg(payloads[i], mode=ImageReadMode.RGB)
        theirs = TF.resize(full, [64, 64], antialias=True)
        assert (images[i].int() - theirs.int()).abs().max() <= 1
        # the workers' path (PIL, reduced-size DCT decoding for the large one): close
        pil, hw = decode_image(path, 64)
        assert hw == SHAPES[i]
        diff = (images[i].int() - pil.int()).abs().float()
        assert diff.mean() < 1.5 and diff.max() <= 8, (SHAPES[i], diff.mean(), diff.max())


def test_other_formats_cmyk_and_rotated_jpegs_are_decoded_in_the_worker(tmp_path):
    Image.fromarray(_smooth(30, 40, 1)).save(tmp_path / "a.png")
    rotated = Image.fromarray(_smooth(30, 40, 2))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90: the original is 40 high, 30 wide
    rotated.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(_smooth(20, 24, 3)).convert("CMYK").save(tmp_path / "k.jpg", quality=95)
    for name in ("a.png", "r.jpg", "k.jpg"):
        payload = read_for_device(tmp_path / name, 32)
        canvas, hw = decode_image(tmp_path / name, 32)
        assert isinstance(payload, tuple) and torch.equal(payload[0], canvas)
        assert payload[1] == hw
    assert read_for_device(tmp_path / "r.jpg", 32)[1] == (40, 30)
    images, sizes, ok, _, _ = _decode([tmp_path / "a.png", tmp_path / "r.jpg"], canvas=32)
    assert bool(ok.all()) and sizes.tolist() == [[30, 40], [40, 30]]
    assert torch.equal(images[1], decode_image(tmp_path / "r.jpg", 32)[0])


def _folder(root, n=10, bad=False):
    for i in range(n):
        h, w = SHAPES[i % len(SHAPES)]
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth(h, w, i)).save(root / f"c{i % 2}" / f"{i}.jpg", quality=90)
    if bad:  # the header is intact (it passes the open-time check), the data is cut
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3),
                                                          dtype=np.uint8)).save(buf, "JPEG")
        (root / "c1" / "bad.jpg").write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.6)])
    return root


def test_the_loader_decodes_on_the_device_and_replaces_or_names_bad_files(tmp_path):
    folder = _folder(tmp_path / "imgs", bad=True)
    ds = open_source(f"folder:{folder}", image_size=32, skip_bad_images=True).train
    bad = ds.files.index(folder / "c1" / "bad.jpg")
    plain = list(BatchLoader(ds, 4, seed=1, num_workers=0).iterate())
    loader = BatchLoader(ds, 4, seed=1, num_workers=2, decode_on=CPU)
    got = list(loader.iterate())
    loader.close()
    assert bad in ds.bad_while_decoding and "JPEG decoder" in ds.bad_while_decoding[bad]
    assert len(got) == len(plain)
    for (images, index, sizes), (ref, index2, sizes2) in zip(got, plain):
        assert torch.equal(index, index2) and torch.equal(sizes, sizes2)
        assert bad not in index.tolist()
        # the workers decode the large JPEGs at 1/8 scale in the DCT here (a 36-px canvas)
        assert (images.int() - ref.int()).abs().float().mean() < 3
    strict = open_source(f"folder:{folder}", image_size=32).train
    with pytest.raises(DataError, match=r"unreadable image: .*bad\.jpg \(JPEG decoder: "):
        list(BatchLoader(strict, 4, seed=1, num_workers=0, decode_on=CPU).iterate())


def test_a_run_decoding_on_the_device_trains_through_the_cli(tmp_path, monkeypatch):
    from ssl_zoo.data import views as V

    folder = _folder(tmp_path / "imgs", n=12)
    seen = []
    make_views = V.make_views

    def recording(images, spec, generator=None, sizes=None):
        seen.append(sizes.clone())
        return make_views(images, spec, generator, sizes)

    monkeypatch.setattr("ssl_zoo.train.make_views", recording)
    run = tmp_path / "run"
    assert main(["train", "--method", "swav", "--dataset", f"folder:{folder}", "--backbone",
                 "convnet", "--set", "image_size=32", "--batch-size", "4", "--set",
                 "method.num_prototypes=4", "--epochs", "1", "--no-eval", "--no-progress",
                 "--set", "train.decode=device", "--set", "train.num_workers=2",
                 "--out", str(run)]) == 0
    info = json.loads((run / "run_info.json").read_text())
    assert info["decoded_on"] == "cpu" and info["views_made_in"] == "step"
    # the contract's dry step on the first batch, then the epoch's 3 iterations
    assert len(seen) == 4 and torch.equal(seen[0], seen[1])
    assert all(set(map(tuple, s.tolist())) <= set(SHAPES) for s in seen)


def test_decoding_on_the_device_needs_a_folder_and_the_views_in_the_step(tmp_path, capsys):
    from ssl_zoo.assemble import resolve

    with pytest.raises(ConfigError, match="views_in=step or auto"):
        resolve({}, ["train.decode=device", "train.views_in=workers"])
    with pytest.raises(ConfigError, match="train.decode.*device"):
        resolve({}, ["train.decode=gpu"])
    code = main(["train", "--method", "swav", "--dataset", "demo", "--epochs", "1",
                 "--no-eval", "--no-progress", "--set", "train.decode=device",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "train.decode=device decodes image files" in err and "folder:PATH" in err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_nvjpeg_decodes_as_the_cpu_decoder_does(tmp_path):
    paths = []
    for i, (h, w) in enumerate(SHAPES):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(_smooth(h, w, i)).save(paths[-1], quality=95)
    payloads = [read_for_device(p, 64) for p in paths]
    on_cpu = decode_on_device(payloads, 64, CPU, torch.ones(4, dtype=torch.bool), [""] * 4)
    cuda = torch.device("cuda")
    on_gpu = decode_on_device(payloads, 64, cuda, torch.ones(4, dtype=torch.bool), [""] * 4)
    assert on_gpu[0].device.type == "cuda" and on_gpu[1].device.type == "cuda"
    assert torch.equal(on_gpu[1].cpu(), on_cpu[1])
    # nvJPEG's and libjpeg-turbo's inverse DCTs and chroma upsampling differ slightly
    diff = (on_gpu[0].cpu().int() - on_cpu[0].int()).abs().float()
    assert diff.mean() <= 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
