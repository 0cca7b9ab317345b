"""Methods, backbones and dataset sources by name.

Methods come in three ways, none of which needs an edit in ``ssl_zoo/``:

1. the ``ssl_zoo.methods`` entry-point group (our own four methods use it, like any third-party
   package would);
2. the :func:`register_method` decorator, in code the user imports;
3. ``--method path/to/file.py:ClassName`` (or just ``path/to/file.py`` when it defines one method),
   or ``--method package.module:ClassName`` for a class on the import path.

A name is taken once: a decorator or a second distribution claiming a name that is already
registered is a one-line error naming both (never a silent replacement of a built-in).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ssl_zoo.backbones import BACKBONES
from ssl_zoo.data.sources import SOURCES
from ssl_zoo.errors import UserError, suggest
from ssl_zoo.method import Method

ENTRY_POINT_GROUP = "ssl_zoo.methods"

_methods: dict[str, type[Method]] = {}
_entry_points: dict[str, metadata.EntryPoint] | None = None
_clashes: dict[str, str] = {}  # name -> the one-line error (two entry points, one name)


def _class_path(cls: type) -> str:
    """``module:QualName``: how an entry point names a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _entry_point_source(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" of the distribution {dist.name}" if dist is not None and dist.name else ""
    return f"the entry point {ep.value}{where}"


def register_method(name: str | None = None):
    """Class decorator: ``@register_method("mine")`` makes ``--method mine`` work.

    A name that is already taken, by an entry point (our own methods are) or by another class,
    is a :class:`~ssl_zoo.errors.UserError` naming both; registering the same class again (its
    module imported twice) is fine."""

    def wrap(cls: type[Method]) -> type[Method]:
        if not (inspect.isclass(cls) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} is not a subclass of ssl_zoo.Method")
        key = name or cls.name or cls.__name__.lower()
        ep = _discover().get(key)
        if ep is not None and ep.value != _class_path(cls):
            raise UserError(f"method name {key!r} of {_class_path(cls)} (register_method) is "
                            f"already {_entry_point_source(ep)}; choose another name")
        known = _methods.get(key)
        if known is not None and _class_path(known) != _class_path(cls):
            raise UserError(f"method name {key!r} of {_class_path(cls)} (register_method) is "
                            f"already {_class_path(known)}; choose another name")
        if not cls.name:
            cls.name = key
        _methods[key] = cls
        return cls

    return wrap


def _discover() -> dict[str, metadata.EntryPoint]:
    """The ``ssl_zoo.methods`` entry points by name. Two distributions declaring one name with
    different classes are remembered in ``_clashes``: asking for that name is an error."""
    global _entry_points
    if _entry_points is None:
        found: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            other = found.get(ep.name)
            if other is not None and other.value != ep.value:
                _clashes[ep.name] = (f"method name {ep.name!r} is declared twice: by "
                                     f"{_entry_point_source(other)} and by "
                                     f"{_entry_point_source(ep)}; uninstall one")
            found.setdefault(ep.name, ep)
        _entry_points = found
    return _entry_points


def method_names() -> list[str]:
    return sorted(set(_methods) | set(_discover()))


def _load_from_file(spec: str) -> type[Method]:
    path_str, cls_name = spec.rsplit(":", 1) if ".py:" in spec else (spec, "")
    path = Path(path_str)
    if not path.is_file():
        raise UserError(f"method file not found: {path}")
    mod_name = f"ssl_zoo_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    module = sys.modules.get(mod_name)
    if module is None:
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise UserError(f"cannot import {path}: not a Python file")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as exc:  # the user's code: report it in one line
            del sys.modules[mod_name]
            raise UserError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    found = {
        n: c for n, c in vars(module).items()
        if inspect.isclass(c) and issubclass(c, Method) and c is not Method
        and c.__module__ == module.__name__
    }
    if cls_name:
        if cls_name not in found:
            raise UserError(suggest(cls_name, found, f"Method class in {path}"))
        return found[cls_name]
    if len(found) != 1:
        raise UserError(
            f"{path} defines {len(found)} Method classes ({', '.join(found) or 'none'}); "
            f"name one as {path}:ClassName"
        )
    return next(iter(found.values()))


def _load_by_import_path(spec: str) -> type[Method]:
    """``package.module:Class`` (an entry point's form): the class imported from there."""
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise UserError(f"method {spec!r}: cannot import {module_name}: {exc}") from exc
    except AttributeError:
        raise UserError(f"method {spec!r}: {module_name} has no {qualname}") from None
    if not (inspect.isclass(obj) and issubclass(obj, Method)):
        raise UserError(f"method {spec!r} is not a subclass of ssl_zoo.Method")
    return obj


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``, loaded from ``file.py[:Class]``, or imported
    from ``package.module:Class``."""
    if name.endswith(".py") or ".py:" in name:
        return _load_from_file(name)
    if ":" in name:
        return _load_by_import_path(name)
    eps = _discover()
    if name in _clashes:
        raise UserError(_clashes[name])
    if name in _methods:
        return _methods[name]
    if name in eps:
        try:
            cls = eps[name].load()
        except Exception as exc:
            raise UserError(f"method {name!r} failed to load ({eps[name].value}): {exc}") from exc
        if not (inspect.isclass(cls) and issubclass(cls, Method)):
            raise UserError(f"entry point {name!r} ({eps[name].value}) is not an ssl_zoo.Method")
        if not cls.name:
            cls.name = name
        _methods[name] = cls
        return cls
    raise UserError(suggest(name, method_names(), "method"))


def list_methods() -> dict[str, str]:
    """Name -> one-line description of every registered method."""
    out = {}
    for name in method_names():
        try:
            out[name] = get_method(name).description or ""
        except UserError as exc:
            out[name] = f"(failed to load: {exc})"
    return out


def list_backbones() -> dict[str, str]:
    return {name: desc for name, (_, desc) in sorted(BACKBONES.items())}


def list_datasets() -> dict[str, str]:
    return {name: desc for name, (_, desc) in sorted(SOURCES.items())}
