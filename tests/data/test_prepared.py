"""The prepared store (``ssl-zoo prepare``) against the folder it was made from, resume after an
interruption, and its bad-input errors, through the library and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.cli import main
from ssl_zoo.data import prepared as P
from ssl_zoo.data.loader import BatchLoader
from ssl_zoo.data.sources import folder_canvas, open_source
from ssl_zoo.data.views import make_views, multi_crop
from ssl_zoo.errors import DataError

SHAPES = [(30, 40), (60, 30), (20, 20), (48, 64), (9, 7), (40, 80)]
"""(h, w) of the test's originals: 4:3, 1:2, square, tiny, 2:1."""


def _folder(root, splits=("train", "test"), classes=("ant", "bee")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i, (h, w) in enumerate(SHAPES):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.jpg", quality=90)
    return root


def _batches(ds, seed=3, workers=0):
    lo = BatchLoader(ds, 4, seed=seed, num_workers=workers)
    return list(lo.iterate())


def test_prepared_and_folder_give_the_same_batches_and_crops(tmp_path):
    folder = _folder(tmp_path / "imgs")
    size = 16
    P.prepare(f"folder:{folder}", tmp_path / "store", canvas=folder_canvas(size), workers=0,
              show_progress=False)
    a = open_source(f"folder:{folder}", image_size=size)
    b = open_source(f"prepared:{tmp_path / 'store'}", image_size=size)
    assert a.train.classes == b.train.classes and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.labels, b.test.labels) and b.eval_train is b.train
    spec = multi_crop(size, size // 2, 2, (0.14, 1.0), (0.05, 0.14), 1.0, 0.5)
    for (xa, ia, sa), (xb, ib, sb) in zip(_batches(a.train), _batches(b.train, workers=2)):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(sa, sb)
        assert set(map(tuple, sa.tolist())) <= set(SHAPES)  # the originals, not the canvas
        va = make_views(xa, spec, torch.Generator().manual_seed(5), sa)
        vb = make_views(xb, spec, torch.Generator().manual_seed(5), sb)
        for ga, gb in zip(va.groups, vb.groups):
            assert torch.equal(ga, gb)


def test_interrupted_prepare_never_looks_complete_and_resumes(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs", splits=("train",))
    monkeypatch.setattr(P, "CHUNK_IMAGES", 4)
    fetch = P.fetch_in_workers

    def interrupted(ds, chunks, workers):
        for i, batch in enumerate(fetch(ds, chunks, workers)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(P, "fetch_in_workers", interrupted)
    store = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        P.prepare(f"folder:{folder}", store, canvas=24, workers=0, show_progress=False)
    assert not (store / P.MANIFEST).exists()
    assert json.loads((store / P.PROGRESS).read_text())["done"] == {"train": 8}
    with pytest.raises(DataError, match="did not finish.*resume"):
        open_source(f"prepared:{store}")
    monkeypatch.setattr(P, "fetch_in_workers", fetch)
    assert P.prepare(f"folder:{folder}", store, canvas=24, workers=0,
                     show_progress=False)["status"] == "resumed"
    assert not (store / P.PROGRESS).exists()
    P.prepare(f"folder:{folder}", tmp_path / "fresh", canvas=24, workers=0, show_progress=False)
    for f in P._FILES:
        assert (store / "train" / f).read_bytes() == (tmp_path / "fresh" / "train" / f).read_bytes()
    # progress of another canvas: starts clean instead of mixing canvases
    with pytest.raises(DataError, match="another folder or canvas"):
        P.prepare(f"folder:{folder}", store, canvas=20, workers=0, show_progress=False)
    assert P.prepare(f"folder:{folder}", store, canvas=24, workers=0,
                     show_progress=False)["status"] == "up to date"


def test_bad_files_are_named_or_left_out(tmp_path):
    folder = _folder(tmp_path / "imgs", splits=("train",))
    bad = folder / "train" / "bee" / "zz.jpg"
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(bad, quality=90)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # passes the header check
    with pytest.raises(DataError, match=r"unreadable image: .*zz\.jpg.*--skip-bad-images"):
        P.prepare(f"folder:{folder}", tmp_path / "s", canvas=16, workers=0, show_progress=False)
    m = P.prepare(f"folder:{folder}", tmp_path / "s", canvas=16, workers=0,
                  skip_bad_images=True, show_progress=False)
    assert m["splits"]["train"]["skipped_rows"] == [len(SHAPES) * 2]
    d = open_source(f"prepared:{tmp_path / 's'}")
    assert len(d.train) == len(SHAPES) * 2 and d.skipped == 1
    (folder / "train" / "ant" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"not an image file: .*notes\.txt"):
        P.prepare(f"folder:{folder}", tmp_path / "t", canvas=16, workers=0, show_progress=False)
    P.prepare(f"folder:{folder}", tmp_path / "t", canvas=16, workers=0, skip_bad_images=True,
              show_progress=False)
    assert open_source(f"prepared:{tmp_path / 't'}").skipped == 2  # one at open, one decoding


def test_damaged_stores_are_one_line_errors(tmp_path):
    folder = _folder(tmp_path / "imgs", splits=("train",))
    store = tmp_path / "store"
    P.prepare(f"folder:{folder}", store, canvas=16, workers=0, show_progress=False)
    images = store / "train" / "images.npy"
    data = images.read_bytes()
    images.write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated or damaged"):
        open_source(f"prepared:{store}")
    images.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DataError, match="checksum mismatch"):
        open_source(f"prepared:{store}")
    images.write_bytes(data)
    m = json.loads((store / P.MANIFEST).read_text())
    m["canvas"] = 32
    (store / P.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="manifest checksum mismatch"):
        open_source(f"prepared:{store}")
    (store / P.MANIFEST).unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        open_source(f"prepared:{store}")
    with pytest.raises(DataError, match="prepared store not found"):
        open_source(f"prepared:{tmp_path / 'none'}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="is not a prepared store"):
        P.prepare(f"folder:{folder}", tmp_path / "other", canvas=16, show_progress=False)
    with pytest.raises(DataError, match="write folder:PATH"):
        P.prepare(str(folder), tmp_path / "x", show_progress=False)


# --------------------------------------------------------------------------------------------
# through the CLI
# --------------------------------------------------------------------------------------------
def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ssl-zoo: error:"), err
    assert match in err, err


def test_prepare_and_train_from_the_store_through_the_cli(tmp_path, capsys):
    folder = _folder(tmp_path / "imgs")
    store = tmp_path / "store"
    assert main(["prepare", f"folder:{folder}", "--out", str(store), "--canvas", "24",
                 "--workers", "1", "--no-progress"]) == 0
    assert "prepared:" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--method", "simclr", "--dataset", f"prepared:{store}", "--backbone",
                 "convnet", "--epochs", "1", "--batch-size", "4", "--set", "image_size=16",
                 "--set", "train.max_steps=2", "--no-eval", "--no-progress",
                 "--out", str(run)]) == 0
    info = json.loads((run / "run_info.json").read_text())
    assert info["image_size"] == 16 and info["train_images"] == len(SHAPES) * 2
    _one_line_error(capsys, ["prepare", f"folder:{tmp_path / 'none'}", "--out",
                             str(tmp_path / "s2"), "--no-progress"], "image folder not found")
    (store / "train" / "sizes.npy").write_bytes(b"\x93NUMPY")
    _one_line_error(capsys, ["train", "--dataset", f"prepared:{store}", "--no-progress",
                             "--out", str(tmp_path / "r2")], "truncated or damaged")
    (store / P.MANIFEST).unlink()
    _one_line_error(capsys, ["train", "--dataset", f"prepared:{store}", "--no-progress",
                             "--out", str(tmp_path / "r3")], "no manifest.json")
