"""Every dataset source on tiny data the test writes itself, in the real on-disk format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import open_source
from ssl_zoo.errors import DataError


def _rgb(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_demo_is_embedded_real_cifar():
    d = open_source("demo")
    assert len(d.train) == 2000 and len(d.test) == 1000
    assert d.train.image_size == 32 and d.train.classes[0] == "airplane"
    x = d.train.load(torch.arange(4))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    assert d.eval_train is d.train and d.test.labels.max() == 9


def test_npz_nhwc(tmp_path):
    x = _rgb(10)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(10) % 3, x_test=x[:4],
             y_test=np.arange(4) % 3)
    d = open_source(f"npz:{tmp_path}/d.npz")
    torch.testing.assert_close(d.train.load(torch.tensor([2])),
                               torch.from_numpy(x[2:3]).permute(0, 3, 1, 2))
    assert d.test.labels.tolist() == [0, 1, 2, 0]
    np.savez(tmp_path / "f.npz", x_train=x.astype(np.float32))
    with pytest.raises(DataError, match="expected uint8"):
        open_source(f"npz:{tmp_path}/f.npz")
    with pytest.raises(DataError, match="needs a path"):
        open_source("npz")


def _write_cifar(root, hundred=False):
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = "fine_labels" if hundred else "labels"
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + [
        "test_batch"]
    expected = {}
    for name in names:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, key: labels}, fh)
        expected[name] = (data, labels)
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]} if hundred else {
        "label_names": [f"c{i}" for i in range(10)]}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as fh:
        pickle.dump(meta, fh)
    return expected


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    expected = _write_cifar(tmp_path, hundred)
    d = open_source("cifar100" if hundred else "cifar10", data_root=str(tmp_path))
    first = "train" if hundred else "data_batch_1"
    data, labels = expected[first]
    img = d.train.load(torch.tensor([1]))[0]
    # rows are 1024 red, then 1024 green, then 1024 blue values, row-major 32x32
    assert torch.equal(img[1], torch.from_numpy(data[1, 1024:2048].reshape(32, 32)))
    assert d.train.labels[:3].tolist() == labels
    assert len(d.train) == (3 if hundred else 15) and len(d.test) == 3


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="pass --download"):
        open_source("cifar10", data_root=str(tmp_path))


def test_stl10_binary_layout(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(1)
    imgs = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        chw = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
        chw.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # stored column-major
        imgs[split] = chw
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    d = open_source("stl10", data_root=str(tmp_path))
    assert len(d.train) == 7 and len(d.eval_train) == 3 and len(d.test) == 2
    assert torch.equal(d.eval_train.load(torch.tensor([2]))[0], torch.from_numpy(imgs["train"][2]))
    assert d.eval_train.labels.tolist() == [0, 1, 2]
    assert d.train.labels[-1] == -1


def _write_folder(root, sizes=((40, 30), (64, 64), (20, 50))):
    for c, cls in enumerate(("ant", "bee")):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            arr = np.full((h, w, 3), 40 * (c + 1) + i, dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")


def test_folder_with_classes_resizes_to_working_size(tmp_path):
    _write_folder(tmp_path / "imgs")
    d = open_source(f"folder:{tmp_path}/imgs", image_size=24)
    assert d.train.classes == ["ant", "bee"] and d.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = d.train.load(torch.tensor([0, 4]))
    assert x.shape == (2, 3, 24, 24)
    assert int(x[0].float().mean().round()) == 40 and int(x[1].float().mean().round()) == 81
    assert d.test is None


def test_flat_folder_is_unlabeled_and_split_folders_are_used(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(1, 10, i)[0]).save(flat / f"{i}.jpg")
    d = open_source(f"folder:{flat}")
    assert d.train.labels is None and d.eval_train is None and len(d.train) == 3
    _write_folder(tmp_path / "split" / "train")
    _write_folder(tmp_path / "split" / "val")
    d = open_source(f"folder:{tmp_path}/split", image_size=16)
    assert len(d.train) == 6 and len(d.test) == 6


def test_folder_loading_in_workers_equals_main_process(tmp_path):
    _write_folder(tmp_path / "imgs")
    d = open_source(f"folder:{tmp_path}/imgs", image_size=16)
    a = list(BatchLoader(d.train, 2, shuffle=True, seed=3, num_workers=0).iterate())
    b = list(BatchLoader(d.train, 2, shuffle=True, seed=3, num_workers=2).iterate())
    assert len(a) == len(b) == 3
    for (xa, ia), (xb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ia, ib)


def test_bad_files(tmp_path):
    _write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "ant" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"unreadable image: .*x\.png"):
        open_source(f"folder:{tmp_path}/imgs")
    d = open_source(f"folder:{tmp_path}/imgs", skip_bad_images=True)
    assert d.train.skipped == 1 and len(d.train) == 6
    with pytest.raises(DataError, match="image folder not found"):
        open_source(f"folder:{tmp_path}/none")
    with pytest.raises(DataError, match="did you mean 'folder'"):
        open_source("foldr:x")
