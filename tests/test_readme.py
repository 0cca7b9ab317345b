"""Every ``ssl-zoo`` command in the README's code blocks runs: train and compare through
``--dry-run`` (the effective config is resolved and validated, nothing is written), the others
for real on a tiny run. Data the examples name (``cifar.npz``, ``folder:/data/imagenet``) is
stood in for by small files of the same kind, so the commands stay exactly as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ssl_zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[list[str]]:
    """argv (after ``ssl-zoo`` or ``-m ssl_zoo``) of every command in the shell blocks."""
    out = []
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if "ssl-zoo" in words:
                    out.append(words[words.index("ssl-zoo") + 1:])
                elif "ssl_zoo" in words and "-m" in words:
                    out.append(words[words.index("ssl_zoo") + 1:])
    return out


def _npz(path: Path, n_train: int = 300, n_test: int = 100, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train), x_test=rng.integers(
                 0, 256, (n_test, size, size, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test))


def _folder(root: Path) -> None:
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.jpg")


@pytest.fixture
def readme_world(tmp_path, monkeypatch):
    """A working directory with stand-ins for the data the README's examples name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    _npz(tmp_path / "cifar.npz")
    _npz(tmp_path / "data.npz")
    _folder(tmp_path / "imagenet")
    (tmp_path / "my_method.py").write_text(_blocks("python")[0])
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # commands run from the repo root
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18-f37072fd.pth")
    return tmp_path


def _stand_in(argv: list[str], world: Path) -> list[str]:
    """The README's data paths pointed at the stand-ins (and nothing written outside)."""
    out = []
    for a in argv:
        a = a.replace("/data/imagenet-256", str(world / "imagenet-256"))
        out.append(a.replace("/data/imagenet", str(world / "imagenet")))
    return out


def test_the_readme_has_the_commands_this_test_covers():
    commands = _commands()
    kinds = {c[0] for c in commands}
    assert {"train", "eval", "compare", "export", "list"} <= kinds
    assert any("--resume" in c for c in commands) and len(commands) >= 9


def test_every_readme_command_runs(readme_world, capsys):
    world = readme_world
    made_runs: set[str] = set()
    used_later = {c[c.index("--resume") + 1] if "--resume" in c else c[1]
                  for c in _commands() if c[0] in ("eval", "export") or "--resume" in c}
    for argv in [*_commands(), ["train", "--method", "my_method.py:Mine"]]:
        argv = _stand_in(argv, world)
        command = argv[0]
        if command in ("train", "compare"):
            if "--resume" in argv and argv[argv.index("--resume") + 1] != "auto":
                run_dir = argv[argv.index("--resume") + 1]
                assert run_dir in made_runs, f"the README resumes {run_dir} before making it"
            assert main([*argv, "--dry-run"]) == 0, argv
            out = capsys.readouterr().out
            assert '"method_config"' in out and '"views"' in out, argv
            run_dir = argv[argv.index("--out") + 1] if "--out" in argv else ""
            if command == "train" and run_dir in used_later and "--resume" not in argv:
                # make the run for real (a tiny one) so that the commands after it have it
                assert main([*argv, "--backbone", "convnet_w0.25", "--set", "train.max_steps=1",
                             "--no-eval", "--no-progress"]) == 0, argv
                made_runs.add(run_dir)
        elif command in ("eval", "export"):
            if "--weights" not in argv:
                assert argv[1] in made_runs, f"the README uses {argv[1]} before making it"
            extra = ["--set", "eval.pictures=false", "--set", "eval.linear=false"] \
                if command == "eval" else []
            assert main([*argv, *extra]) == 0, argv
        else:
            assert main(argv) == 0, argv
    assert (world / "r18.pt").is_file() and (world / "runs" / "swav-r18" / "eval.json").is_file()


@pytest.fixture
def readme_plugin(tmp_path, monkeypatch):
    """The README's method installed as its ``pyproject.toml`` snippet says: the module the
    entry point names, holding the README's first Python block, on the import path; returns
    (entry-point name, entry-point value, the kit test's namespace)."""
    import sys

    import tomllib

    (toml,) = _blocks("toml")
    (name, value), = tomllib.loads(toml)["project"]["entry-points"]["ssl_zoo.methods"].items()
    module = value.partition(":")[0]
    path = tmp_path / "site" / Path(*module.split("."))
    path.parent.mkdir(parents=True)
    (path.parent / "__init__.py").write_text("")
    path.with_suffix(".py").write_text(_blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    namespace: dict = {}
    exec(compile(_blocks("python")[1], "test_my_method.py", "exec"), namespace)
    yield name, value, namespace
    for key in [k for k in sys.modules if k == module.split(".")[0] or k.startswith(
            module.split(".")[0] + ".")]:
        del sys.modules[key]


def test_the_readme_entry_point_names_the_readme_method(readme_plugin):
    from ssl_zoo import registry

    name, value, namespace = readme_plugin
    cls = registry.get_method(value)  # the entry point's own form, package.module:Class
    assert cls.name == name and cls.__name__ == value.partition(":")[2]
    assert namespace["Mine"] is cls  # the kit test imports the same class
    assert [k for k in namespace if k.startswith("test_")] == [
        "test_mine_passes_the_conformance_checks", "test_mine_is_sync_free_with_a_larger_head"]


def test_the_readme_kit_test_runs(readme_plugin):
    """The README's conformance test, its quick check (the sync-free step)."""
    readme_plugin[2]["test_mine_is_sync_free_with_a_larger_head"]()


@pytest.mark.slow
def test_the_readme_kit_test_runs_every_check(readme_plugin):
    readme_plugin[2]["test_mine_passes_the_conformance_checks"]()
