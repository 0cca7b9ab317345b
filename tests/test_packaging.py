"""The distribution's layout: the built-in methods ship as ``ssl_zoo_methods`` (the repository's
``methods/`` folder), never as a top-level ``methods`` package another distribution could
overwrite."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_methods_is_mapped():
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "ssl_zoo").rglob("__init__.py")}
    assert folders <= listed, f"package folders missing from pyproject: {folders - listed}"
    assert setuptools["package-dir"] == {"ssl_zoo_methods": "methods"}
    assert "methods" not in listed and not any(p.startswith("methods.") for p in listed)


def test_the_methods_import_name_resolves_to_the_methods_folder():
    spec = importlib.util.find_spec("ssl_zoo_methods")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().parent.name == "methods"


def test_entry_points_name_the_distinctive_package():
    declared = PYPROJECT["project"]["entry-points"]["ssl_zoo.methods"]
    assert declared and all(v.startswith("ssl_zoo_methods.") for v in declared.values())
    installed = {ep.name: ep.value for ep in entry_points(group="ssl_zoo.methods")}
    for name, value in declared.items():
        assert installed.get(name) == value, f"reinstall: pip install -e . ({name})"
        assert entry_points(group="ssl_zoo.methods")[name].load().__module__.startswith(
            "ssl_zoo_methods.")
