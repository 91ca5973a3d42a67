"""Config trees: nested mappings from YAML, dotted ``key=value`` overrides, and typed
dataclass trees built from them with errors naming the dotted key. Shared by stage configs
(``train/config.py``) and study presets (``study/config.py``); below every layer."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml

from pivotlab.errors import PivotlabError


class ConfigError(PivotlabError):
    """A config file or override that cannot be used; the message names the key."""


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def _convert(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against the annotation ``kind`` (dataclasses built recursively)."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(kind, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        names = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(kind)
        return {str(k): _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, str):
        try:  # YAML reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {value!r}")
    return value


def build_dataclass(cls: type, values: dict, where: str = "") -> Any:
    """A config dataclass tree from a nested mapping: unknown keys and wrong types raise
    ``ConfigError`` naming the dotted key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in known]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key {key} (known here: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key)
    return cls(**kwargs)


def apply_override(tree: dict, assignment: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {assignment!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {assignment!r}: cannot parse the value ({error})") from None
    set_dotted(tree, ".".join(keys), value, f"override {assignment!r}")


def set_dotted(
    tree: dict, dotted: str, value: Any, where: str = "", drop_none: bool = False
) -> None:
    """Set ``a.b.c`` to ``value`` in a nested mapping, making sections on the way; with
    ``drop_none``, None removes the key instead (the field's default then applies)."""
    *parents, last = dotted.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where or dotted}: {key} is not a section")
        node = child
    if value is None and drop_none:
        node.pop(last, None)
    else:
        node[last] = value
