"""Every user mistake gets a one-line error and exit code 2 through the CLI, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_zoo.cli import main


def _run(capsys, *args):
    code = main(["train", "--no-progress", "--no-eval", *args])
    err = capsys.readouterr().err
    return code, err


def _assert_one_line(code, err, message):
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_crop_larger_than_images(tmp_path, capsys, toy_method_file):
    toy = f"{toy_method_file}:Toy"
    cfg = tmp_path / "views.yaml"
    cfg.write_text("views:\n  groups:\n    - {count: 2, size: 64}\n")
    code, err = _run(capsys, "--method", toy, "--config", str(cfg), "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, "crop size 64 px is larger than the 32-px images")


def test_batch_larger_than_dataset(tmp_path, capsys, toy_method_file):
    toy = f"{toy_method_file}:Toy"
    code, err = _run(capsys, "--method", toy, "--batch-size", "5000",
                     "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, "larger than the dataset (2000 images)")


def test_missing_npz(tmp_path, capsys, toy_method_file):
    toy = f"{toy_method_file}:Toy"
    code, err = _run(capsys, "--method", toy, "--dataset", f"npz:{tmp_path}/none.npz",
                     "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, "npz file not found")


def test_npz_with_wrong_keys(tmp_path, capsys, toy_method_file):
    toy = f"{toy_method_file}:Toy"
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8))
    code, err = _run(capsys, "--method", toy, "--dataset", f"npz:{path}",
                     "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, "missing key 'x_train'")


def _folder(tmp_path, bad: bool):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            arr = np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    if bad:
        (root / "cat" / "broken.jpg").write_bytes(b"not really a jpeg")
        (root / "dog" / "notes.txt").write_text("hello")
    return root


def test_unreadable_and_non_image_files_are_named(tmp_path, capsys, toy_method_file):
    toy = f"{toy_method_file}:Toy"
    root = _folder(tmp_path, bad=True)
    code, err = _run(capsys, "--method", toy, "--dataset", f"folder:{root}",
                     "--batch-size", "4", "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, "broken.jpg")
    assert "--skip-bad-images" in err


def test_skip_bad_images_trains(tmp_path, capsys, toy_method_file):
    root = _folder(tmp_path, bad=True)
    code = main(["train", "--no-progress", "--no-eval", "--method", f"{toy_method_file}:Toy",
                 "--dataset", f"folder:{root}", "--skip-bad-images", "--batch-size", "4",
                 "--epochs", "1", "--set", "image_size=16", "--set", "train.num_workers=0",
                 "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err


def test_empty_folder(tmp_path, capsys, toy_method_file):
    toy = f"{toy_method_file}:Toy"
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "--method", toy, "--dataset", f"folder:{tmp_path}/empty",
                     "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, "no images found")


def test_resume_of_a_missing_directory(tmp_path, capsys, toy_method_file):
    code, err = _run(capsys, "--resume", str(tmp_path / "nothing"))
    _assert_one_line(code, err, "no config.json there")


@pytest.mark.parametrize("sets, message", [
    (["train.batch_size=0"], "train.batch_size must be >= 1"),
    (["train.device=tpu"], "train.device"),
    (["backbone_stem=wide"], "backbone_stem"),
])
def test_impossible_trainer_values(tmp_path, capsys, toy_method_file, sets, message):
    toy = f"{toy_method_file}:Toy"
    args = [x for s in sets for x in ("--set", s)]
    code, err = _run(capsys, "--method", toy, *args, "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, message)


@pytest.mark.parametrize("sets, message", [
    (["method.queue_length=-128"], "queue_length must be >= 0"),
    (["method.num_prototypes=5000"], "use at most 2000"),
    (["views.groups.1.count=4", "views.groups.1.size=64"],
     "views.groups.1.size: crop size 64 px is larger than"),
    # SwAV's 32-px local group is off by default: setting its size alone is refused, not ignored
    (["views.groups.1.size=12"], "views.groups.1.size: group 1 has count 0 (off)"),
    (["method.crops_for_assign=[0,9]"], "crops_for_assign"),
])
def test_swav_settings_that_cannot_work(tmp_path, capsys, sets, message):
    args = [x for s in sets for x in ("--set", s)]
    code, err = _run(capsys, "--method", "swav", *args, "--out", str(tmp_path / "r"))
    _assert_one_line(code, err, message)
