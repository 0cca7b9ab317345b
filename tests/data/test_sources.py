"""Every dataset source on tiny data the test writes itself, in the real on-disk format."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.data.decode import decode_image
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import (
    DEFAULT_FOLDER_SIZE,
    DEMO_PATH,
    SOURCES,
    FolderImages,
    check_image_file,
    open_source,
    resize_images,
)
from ssl_zoo.errors import DataError


def _rgb(n, h=32, w=None, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w or h, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# demo and npz
# --------------------------------------------------------------------------------------------
def test_demo_is_the_embedded_npz():
    d = open_source("demo")
    ref = np.load(DEMO_PATH)
    assert len(d.train) == 2000 and len(d.test) == 1000 and d.train.image_size == 32
    assert d.train.classes == [str(c) for c in ref["classes"]] and d.train.classes[0] == "airplane"
    idx = torch.tensor([0, 7, 1999])
    x = d.train.load(idx)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32)
    for row, i in enumerate(idx.tolist()):  # pixel (c, y, x) of NCHW is [y, x, c] of NHWC
        for c, yy, xx in ((0, 0, 0), (1, 5, 31), (2, 31, 17)):
            assert int(x[row, c, yy, xx]) == int(ref["x_train"][i, yy, xx, c])
    assert torch.equal(d.test.labels, torch.from_numpy(ref["y_test"]).long())
    assert d.eval_train is d.train and d.skipped == 0


def test_npz_layouts(tmp_path):
    x = _rgb(6, 8)
    np.savez(tmp_path / "nhwc.npz", x_train=x, y_train=np.arange(6) % 3, x_test=x[:4],
             y_test=np.arange(4) % 2, classes=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "nchw.npz", x_train=x.transpose(0, 3, 1, 2).copy())
    np.savez(tmp_path / "grey.npz", x_train=x[..., 0].copy())
    a = open_source(f"npz:{tmp_path}/nhwc.npz")
    b = open_source(f"npz:{tmp_path}/nchw.npz")
    g = open_source(f"npz:{tmp_path}/grey.npz")
    all_idx = torch.arange(6)
    for i, c, yy, xx in ((2, 0, 1, 7), (5, 2, 7, 0), (0, 1, 3, 3)):
        assert int(a.train.load(all_idx)[i, c, yy, xx]) == int(x[i, yy, xx, c])
    assert torch.equal(a.train.load(all_idx), b.train.load(all_idx))
    grey = g.train.load(all_idx)
    assert torch.equal(grey[:, 0], grey[:, 2]) and int(grey[3, 1, 2, 5]) == int(x[3, 2, 5, 0])
    assert a.test.labels.tolist() == [0, 1, 0, 1] and a.train.classes == ["a", "b", "c"]
    assert a.eval_train is a.train
    assert b.train.labels is None and b.eval_train is None and b.test is None


def test_npz_ambiguous_layout_prefers_square_images(tmp_path):
    x = _rgb(2, 3, 3)  # (2, 3, 3, 3): both layouts give square 3x3 images -> NHWC
    np.savez(tmp_path / "t.npz", x_train=x)
    img = open_source(f"npz:{tmp_path}/t.npz").train.load(torch.tensor([1]))[0]
    assert int(img[2, 0, 1]) == int(x[1, 0, 1, 2])


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((4, 8, 8, 3), np.float32)), "expected uint8"),
    (dict(images=np.zeros((4, 8, 8, 3), np.uint8)), "missing key 'x_train'"),
    (dict(x_train=np.zeros((4, 8, 8, 5), np.uint8)), "colour channels"),
    (dict(x_train=np.zeros((4, 8, 6, 3), np.uint8)), "must be square"),
    (dict(x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.zeros(3, np.int64)),
     "expected 4 integer labels"),
    (dict(x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.zeros(4, np.float32)),
     "integer labels"),
    (dict(x_train=np.zeros((0, 8, 8, 3), np.uint8)), "holds no images"),
    (dict(x_train=np.zeros((2, 8, 8, 3), np.uint8), x_test=np.zeros((2, 4, 4, 3), np.uint8)),
     "test images 4 px"),
])
def test_npz_wrong_format_is_named(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        open_source(f"npz:{tmp_path}/bad.npz")
    assert "bad.npz" in str(err.value)


def test_npz_unreadable_files(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="garbage.npz: not a readable .npz"):
        open_source(f"npz:{tmp_path}/garbage.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="obj.npz: not a readable"):
        open_source(f"npz:{tmp_path}/obj.npz")
    with pytest.raises(DataError, match="npz file not found"):
        open_source(f"npz:{tmp_path}/none.npz")


def test_npz_resized_to_image_size(tmp_path):
    x = np.zeros((2, 16, 16, 3), np.uint8)
    x[0] = 200
    x[1, :, 8:] = 100  # left half 0, right half 100
    np.savez(tmp_path / "d.npz", x_train=x, x_test=x)
    d = open_source(f"npz:{tmp_path}/d.npz", image_size=8)
    y = d.train.load(torch.arange(2))
    assert y.shape == (2, 3, 8, 8) and d.test.image_size == 8
    assert bool((y[0] == 200).all())
    assert bool((y[1, :, :, :3] == 0).all()) and bool((y[1, :, :, 5:] == 100).all())


@pytest.mark.parametrize("shape, size", [((2, 3, 20, 20), 8), ((1, 3, 12, 18), 6),
                                         ((1, 3, 10, 10), 15)])
def test_resize_images_matches_pil(shape, size):
    """Shorter side to ``size`` (antialiased bilinear) + centre crop, against PIL."""
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    ours = resize_images(x, size)
    h, w = shape[2:]
    scale = size / min(h, w)
    nh, nw = round(h * scale), round(w * scale)
    for i in range(shape[0]):
        im = Image.fromarray(x[i].permute(1, 2, 0).numpy()).resize((nw, nh), Image.BILINEAR)
        top, left = (nh - size) // 2, (nw - size) // 2
        ref = np.asarray(im)[top:top + size, left:left + size].transpose(2, 0, 1)
        diff = (ours[i].int() - torch.from_numpy(ref.astype(np.int32))).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.6


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python pickle batches
# --------------------------------------------------------------------------------------------
def _dump(obj, path):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the protocol of the published (python 2) files


def _write_cifar(root, hundred=False, per_batch=3):
    """The published layout: dict batches with 'data' (N, 3072) uint8 rows and label lists."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n_classes = 100 if hundred else 10
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + [
        "test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, n_classes, per_batch).tolist()
        batch = {"batch_label": f"{name} batch", "data": data,
                 "filenames": [f"img_{name}_{i}.png" for i in range(per_batch)]}
        if hundred:
            batch.update(fine_labels=labels, coarse_labels=[v // 5 for v in labels])
        else:
            batch["labels"] = labels
        _dump(batch, folder / name)
        written[name] = (data, labels)
    if hundred:
        _dump({"fine_label_names": [f"fine{i}" for i in range(100)],
               "coarse_label_names": [f"coarse{i}" for i in range(20)]}, folder / "meta")
    else:
        _dump({"num_cases_per_batch": per_batch, "num_vis": 3072,
               "label_names": [f"c{i}" for i in range(10)]}, folder / "batches.meta")
    return folder, written


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    _, written = _write_cifar(tmp_path, hundred)
    d = open_source("cifar100" if hundred else "cifar10", data_root=str(tmp_path))
    train_parts = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    assert len(d.train) == 3 * len(train_parts) and len(d.test) == 3
    assert d.train.classes[1] == ("fine1" if hundred else "c1")
    assert d.train.labels.tolist() == sum((written[p][1] for p in train_parts), [])
    rng = np.random.default_rng(1)
    images = d.train.load(torch.arange(len(d.train)))
    for n in range(len(d.train)):
        data = written[train_parts[n // 3]][0][n % 3]
        for c, y, x in rng.integers(0, [3, 32, 32], (5, 3)):
            # a row holds the red plane, then green, then blue; each plane row-major 32x32
            assert int(images[n, c, y, x]) == int(data[c * 1024 + y * 32 + x])
    test = d.test.load(torch.tensor([2]))[0]
    data, labels = written["test" if hundred else "test_batch"]
    assert int(test[2, 31, 0]) == int(data[2, 2 * 1024 + 31 * 32]) and \
        d.test.labels.tolist() == labels


def test_cifar_missing_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="pass --download .* or --data-root") as err:
        open_source("cifar10", data_root=str(tmp_path))
    assert "cifar-10-batches-py" in str(err.value)
    monkeypatch.setenv("SSL_ZOO_DATA", str(tmp_path / "env-root"))
    with pytest.raises(DataError, match="env-root"):
        open_source("cifar100")


def test_cifar_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_cifar10(root, download=False, **_):
        calls.append((root, download))
        _write_cifar(tmp_path / "dl")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    d = open_source("cifar10", data_root=str(tmp_path / "dl"), download=True)
    assert calls == [(str(tmp_path / "dl"), True)] and len(d.train) == 15

    def offline(root, download=False, **_):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="downloading cifar100 .* failed .*unreachable"):
        open_source("cifar100", data_root=str(tmp_path / "x"), download=True)


def test_cifar_broken_files_are_named(tmp_path):
    folder, _ = _write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(DataError, match="data_batch_3"):
        open_source("cifar10", data_root=str(tmp_path))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing file .*data_batch_3"):
        open_source("cifar10", data_root=str(tmp_path))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder, _ = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    _dump({"data": Evil(), "labels": [0]}, folder / "data_batch_1")
    with pytest.raises(DataError, match="refusing to load"):
        open_source("cifar10", data_root=str(tmp_path))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# STL-10 binary
# --------------------------------------------------------------------------------------------
def _write_stl(root, counts=(("train", 3), ("test", 2), ("unlabeled", 4))):
    """Bytes as published: per image 3 planes (R, G, B), each plane column by column."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    raw = {}
    for split, n in counts:
        data = rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8)
        data.tofile(folder / f"{split}_X.bin")
        raw[split] = data
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")
    return folder, raw


def _stl_pixel(raw, n, c, y, x):
    return int(raw[n * 27648 + c * 9216 + x * 96 + y])  # column-major: x outer, y inner


def test_stl10_binary_layout(tmp_path):
    _, raw = _write_stl(tmp_path)
    d = open_source("stl10", data_root=str(tmp_path))
    assert len(d.train) == 7 and len(d.eval_train) == 3 and len(d.test) == 2
    assert d.eval_train.labels.tolist() == [0, 1, 2] and d.train.classes[9] == "name9"
    assert d.train.labels.tolist() == [0, 1, 2, -1, -1, -1, -1]
    ssl = d.train.load(torch.arange(7))
    lab = d.eval_train.load(torch.arange(3))
    test = d.test.load(torch.arange(2))
    for n, c, y, x in ((0, 0, 0, 1), (2, 1, 5, 90), (1, 2, 95, 3)):
        assert int(lab[n, c, y, x]) == _stl_pixel(raw["train"], n, c, y, x)
        assert int(ssl[n, c, y, x]) == _stl_pixel(raw["train"], n, c, y, x)
        assert int(ssl[3 + n, c, y, x]) == _stl_pixel(raw["unlabeled"], n, c, y, x)
        assert int(test[n % 2, c, y, x]) == _stl_pixel(raw["test"], n % 2, c, y, x)


def test_stl10_without_unlabeled_and_resized(tmp_path):
    _write_stl(tmp_path, counts=(("train", 2), ("test", 1)))
    d = open_source("stl10", data_root=str(tmp_path), image_size=48)
    assert d.train is d.eval_train and len(d.train) == 2
    assert d.train.load(torch.arange(2)).shape == (2, 3, 48, 48) and d.test.image_size == 48


def test_stl10_broken_files(tmp_path):
    folder, _ = _write_stl(tmp_path)
    (folder / "test_y.bin").unlink()
    with pytest.raises(DataError, match="missing file .*test_y.bin"):
        open_source("stl10", data_root=str(tmp_path))
    (folder / "test_X.bin").write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match="test_X.bin: 1000 bytes"):
        open_source("stl10", data_root=str(tmp_path))
    with pytest.raises(DataError, match="pass --download"):
        open_source("stl10", data_root=str(tmp_path / "nothing"))


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------
def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_classes(root, classes=("ant", "bee"), sizes=((40, 30), (64, 64), (20, 50))):
    """Constant-colour images of several sizes; the value encodes (class, image)."""
    for c, cls in enumerate(classes):
        for i, (w, h) in enumerate(sizes):
            _png(root / cls / f"{i}.png", np.full((h, w, 3), 40 * (c + 1) + i, np.uint8))


def test_decode_keeps_the_whole_image_stretched_to_the_canvas(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # w 40, h 30
    _png(tmp_path / "a.png", arr)
    ours, hw = decode_image(tmp_path / "a.png", 12)
    assert hw == (30, 40) and ours.shape == (3, 12, 12)
    # the whole image, each axis to 12 px (PIL's bilinear resize of the original)
    ref = np.asarray(Image.fromarray(arr).resize((12, 12), Image.BILINEAR))
    diff = (ours.int() - torch.from_numpy(ref.transpose(2, 0, 1).astype(np.int32))).abs()
    assert diff.max() <= 1
    grey = np.arange(100, dtype=np.uint8).reshape(10, 10)
    Image.fromarray(grey).save(tmp_path / "g.png")
    g, hw = decode_image(tmp_path / "g.png", 10)
    assert hw == (10, 10) and torch.equal(g[0], torch.from_numpy(grey)) and torch.equal(g[0], g[2])


def test_reduced_size_jpeg_decoding_stays_close_to_a_full_decode(tmp_path):
    """PIL draft (DCT scaling) when the canvas is at most half the file: same picture."""
    yy, xx = np.mgrid[0:480, 0:640]
    arr = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) * 255 // 1118], -1)
    Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    ours, hw = decode_image(tmp_path / "big.jpg", 100)
    assert hw == (480, 640)
    with Image.open(tmp_path / "big.jpg") as im:
        full = np.asarray(im.convert("RGB").resize((100, 100), Image.BILINEAR))
    diff = (ours.int() - torch.from_numpy(full.transpose(2, 0, 1).astype(np.int32))).abs()
    assert diff.float().mean() < 2 and diff.max() <= 12


def test_decode_applies_exif_orientation(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[0, 0] = 255  # top-left pixel white
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    x, _ = decode_image(tmp_path / "r.png", 8)
    assert int(x[0, 7, 7]) == 255 and int(x[0, 0, 0]) == 0
    exif[0x0112] = 6  # rotate 90: the original size is the rotated one
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / "q.png", exif=exif)
    assert decode_image(tmp_path / "q.png", 8)[1] == (10, 6)


def test_folder_with_nested_classes(tmp_path):
    _write_classes(tmp_path / "imgs")
    _png(tmp_path / "imgs" / "bee" / "deeper" / "z.png", np.full((24, 24, 3), 99, np.uint8))
    d = open_source(f"folder:{tmp_path}/imgs", image_size=24)
    assert d.train.classes == ["ant", "bee"] and d.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    x, _, sizes = d.train.load_batch(torch.arange(7))
    assert x.shape == (7, 3, 27, 27)  # the canvas: 24 / 0.875, the evaluation resize size
    assert x.float().mean((1, 2, 3)).round().tolist() == [40, 41, 42, 80, 81, 82, 99]
    assert sizes.tolist() == [[30, 40], [64, 64], [50, 20]] * 2 + [[24, 24]]
    assert d.test is None and d.eval_train is d.train
    assert open_source(f"folder:{tmp_path}/imgs").train.image_size == DEFAULT_FOLDER_SIZE


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        Image.fromarray(_rgb(1, 10, seed=i)[0]).save(tmp_path / f"{i}.jpg")
    d = open_source(f"folder:{tmp_path}", image_size=10)
    assert d.train.labels is None and d.eval_train is None and len(d.train) == 3


def test_split_folders_share_the_training_class_order(tmp_path):
    _write_classes(tmp_path / "train", classes=("ant", "bee", "cat"))
    _write_classes(tmp_path / "val", classes=("cat",))  # val lacks ant and bee
    d = open_source(f"folder:{tmp_path}", image_size=16)
    assert len(d.train) == 9 and len(d.test) == 3 and d.test.labels.tolist() == [2, 2, 2]
    _write_classes(tmp_path / "test", classes=("ant", "dog"))
    with pytest.raises(DataError, match="dog are not among the training classes"):
        open_source(f"folder:{tmp_path}")  # test/ is preferred to val/


def test_train_folder_without_test(tmp_path):
    _write_classes(tmp_path / "train")
    d = open_source(f"folder:{tmp_path}", image_size=16)
    assert d.train.classes == ["ant", "bee"] and d.test is None


def test_bad_files_are_named_or_skipped(tmp_path):
    _write_classes(tmp_path / "imgs")
    (tmp_path / "imgs" / "ant" / "x.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "imgs" / "bee" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unreadable image: .*x\.png.*--skip-bad-images"):
        open_source(f"folder:{tmp_path}/imgs")
    (tmp_path / "imgs" / "ant" / "x.png").unlink()
    with pytest.raises(DataError, match=r"not an image file: .*notes\.txt"):
        open_source(f"folder:{tmp_path}/imgs")
    (tmp_path / "imgs" / "ant" / "x.png").write_bytes(b"\x89PNG broken")
    d = open_source(f"folder:{tmp_path}/imgs", skip_bad_images=True)
    assert d.train.skipped == 2 and d.skipped == 2 and len(d.train) == 6


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        open_source(f"folder:{tmp_path}/none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found .*empty"):
        open_source(f"folder:{tmp_path}/empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="all 1 files are unreadable"):
        open_source(f"folder:{tmp_path}/junk", skip_bad_images=True)


def _truncated_jpeg(path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(1, 48, seed=5)[0]).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_file_failing_only_when_decoded(tmp_path):
    """A truncated JPEG passes the open-time check; the loader names it or replaces it."""
    _write_classes(tmp_path / "imgs", sizes=((16, 16),) * 4)
    bad = tmp_path / "imgs" / "bee" / "9.jpg"
    _truncated_jpeg(bad)
    assert check_image_file(bad) is None
    d = open_source(f"folder:{tmp_path}/imgs", image_size=16)
    bad_index = d.train.files.index(bad)
    with pytest.raises(DataError, match=r"unreadable image: .*9\.jpg") as err:
        list(BatchLoader(d.train, 3, shuffle=False, num_workers=2).iterate())
    assert "Traceback" not in str(err.value)
    d = open_source(f"folder:{tmp_path}/imgs", image_size=16, skip_bad_images=True)
    batches = list(BatchLoader(d.train, 3, shuffle=False, num_workers=2).iterate())
    assert [len(i) for _, i, _ in batches] == [3, 3, 3]
    assert d.train.skipped == 1 and d.train.bad_while_decoding.keys() == {bad_index}
    for images, index, sizes in batches:
        assert bad_index not in index.tolist()
        ref_images, _, ref_sizes = d.train.load_batch(index)  # each row is its index's image
        assert torch.equal(images, ref_images) and torch.equal(sizes, ref_sizes)


def test_a_batch_of_only_bad_files_borrows_the_next_good_image(tmp_path):
    _write_classes(tmp_path / "imgs", classes=("ant",), sizes=((16, 16),) * 2)
    _truncated_jpeg(tmp_path / "imgs" / "ant" / "zz.jpg")  # index 2, the last
    d = open_source(f"folder:{tmp_path}/imgs", image_size=16, skip_bad_images=True)
    images, index, _ = next(BatchLoader(d.train, 1, shuffle=False).iterate(start_batch=2))
    assert index.tolist() == [0] and torch.equal(images, d.train.load(torch.tensor([0])))
    assert d.train.skipped == 1


class _PidImages(FolderImages):
    """Records which process decodes each image."""

    def decode_or_none(self, i):
        (self.pid_dir / f"{i}-{os.getpid()}").touch()
        return super().decode_or_none(i)


def test_folder_images_are_decoded_in_worker_processes(tmp_path):
    _write_classes(tmp_path / "imgs")
    d = open_source(f"folder:{tmp_path}/imgs", image_size=16)
    ds = _PidImages(d.train.name, d.train.files, d.train.labels.tolist(), d.train.classes, 16)
    ds.pid_dir = tmp_path / "pids"
    ds.pid_dir.mkdir()
    main = list(BatchLoader(ds, 2, shuffle=True, seed=3, num_workers=0).iterate())
    assert {p.name.split("-")[1] for p in ds.pid_dir.iterdir()} == {str(os.getpid())}
    for p in ds.pid_dir.iterdir():
        p.unlink()
    workers = list(BatchLoader(ds, 2, shuffle=True, seed=3, num_workers=2).iterate())
    pids = {p.name.split("-")[1] for p in ds.pid_dir.iterdir()}
    assert len(list(ds.pid_dir.iterdir())) == 6 and str(os.getpid()) not in pids
    assert len(main) == len(workers) == 3
    for (xa, ia, sa), (xb, ib, sb) in zip(main, workers):
        assert torch.equal(xa, xb) and torch.equal(ia, ib) and torch.equal(sa, sb)


# --------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------
def test_spec_errors(tmp_path):
    with pytest.raises(DataError, match="did you mean 'folder'"):
        open_source("foldr:x")
    with pytest.raises(DataError, match="folder:"):
        open_source(str(tmp_path))  # a bare directory: say how to write it
    with pytest.raises(DataError, match="needs a path"):
        open_source("npz")
    with pytest.raises(DataError, match="takes no path"):
        open_source("cifar10:/data")
    with pytest.raises(DataError, match="image size must be >= 1"):
        open_source("demo", image_size=-3)
    assert set(SOURCES) == {"demo", "npz", "cifar10", "cifar100", "stl10", "folder", "prepared"}
    assert all(callable(b) and isinstance(desc, str) and desc for b, desc in SOURCES.values())
