"""Typed dataclasses from dicts, YAML/JSON files and ``--set`` overrides; errors name the field."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ssl_zoo.errors import ConfigError, suggest

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


# --------------------------------------------------------------------------------------------
# conversion between dataclasses and plain data
# --------------------------------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    """Plain JSON-able data (dicts, lists, numbers, strings) from nested dataclasses."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked and converted to the annotated type ``tp``; ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), where)
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, where)
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, typing.get_args(tp), where)
    if origin is dict:
        return _coerce_dict(value, where)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar(value, where)
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _coerce_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    """The first member of ``X | Y | None`` that takes ``value``; else the first member's error."""
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")


def _coerce_dataclass(value: Any, tp: type, where: str) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
    return from_dict(tp, value, where)


def _coerce_sequence(value: Any, origin: type, args: tuple[Any, ...], where: str) -> Any:
    """A list or tuple (``list[X]``, ``tuple[X, ...]``, fixed ``tuple[X, Y]``); a string is
    split at commas (``--set scale=0.14,1`` or ``(0.14, 1)``)."""
    if isinstance(value, str):
        value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_dict(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _coerce_int(value: Any, where: str) -> int:
    """An int, an integral float or a string of digits (``1_000``); never a bool."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _coerce_float(value: Any, where: str) -> float:
    """A finite float from a number or its text; never a bool."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    else:
        try:
            out = float(str(value))
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return out


def _coerce_str(value: Any, where: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected a string, got {value!r}")


_SCALARS = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data``; unknown keys and bad types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            what = f"config field {where}." if where else "config field"
            raise ConfigError(suggest(key, names, what))
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# files and --set overrides
# --------------------------------------------------------------------------------------------
def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kind = path.suffix.lstrip(".") or "JSON"
        raise ConfigError(f"{path}: not valid {kind}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return data


def _parse_scalar(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``(key, value)`` of one ``--set key=value``, the value parsed as JSON when it parses."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, _, raw = assignment.partition("=")
    return key.strip(), _parse_scalar(raw.strip())


def set_at_path(data: dict[str, Any], parts: list[str], value: Any, key: str) -> None:
    """``value`` put into the plain dict ``data`` at the path ``parts`` (in place).

    Missing dicts on the way are made (a list when the next part is an index); a digit part
    indexes a list, and an index past its end is an error naming ``--set key``.
    """
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        if node.get(part) is None:
            node[part] = [] if nxt_is_index else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, key: str) -> int:
    idx = int(part) if part.isdigit() else -1
    if not 0 <= idx < len(node):
        raise ConfigError(f"--set {key}: index {part} out of range")
    return idx
