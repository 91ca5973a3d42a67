"""Config trees: nested mappings from YAML (a file may name a ``base:`` file it changes),
dotted ``key=value`` overrides, and typed dataclass trees built from them with errors naming
the dotted key. Shared by stage configs (``train/config.py``) and study presets
(``study/config.py``); below every layer.

Also a run config's command-line options, derived from its dataclass (``add_options``,
``from_options``), so a field added to a config is an option with nothing else to edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pivotlab.errors import PivotlabError


class ConfigError(PivotlabError):
    """A config file or override that cannot be used; the message names the key."""


# The key by which a config file names the file it changes (a path relative to itself).
BASE_KEY = "base"


def read_tree(path: Path) -> dict:
    """A YAML config file as a nested mapping, its ``base:`` chain merged in: the base's
    tree first, this file's sections merged over it key by key (a list or a value replaces
    the base's). So configs that share a recipe say only what differs."""
    return _read_tree(path, ())


def _read_tree(path: Path, chain: tuple[Path, ...]) -> dict:
    if not path.is_file():
        named = f"{chain[-1]}: {BASE_KEY} {path.name!r}: " if chain else f"{path}: "
        raise ConfigError(f"{named}no such config file")
    if path.resolve() in chain:
        raise ConfigError(f"{chain[-1]}: {BASE_KEY} {path.name!r} leads back to itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = tree.pop(BASE_KEY, None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name, got {base!r}")
    return merged(_read_tree(path.parent / base, (*chain, path.resolve())), tree)


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in: sections key by key, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


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


# ---------------------------------------------------------------------------- command line
# transformers.HfArgumentParser derives options from dataclasses too, but it sets each
# option's type from the annotation alone: it cannot read a comma-separated tuple, a
# repeatable NAME=SOURCE pair or a positional argument, and importing it costs about half a
# second on every command. The metadata keys below say what the annotation cannot.


def cli_field(help: str, *, default: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A dataclass field with its command-line option: ``help`` (required), and optionally
    ``flag`` (default ``--name-with-dashes``), ``positional``, ``metavar``, ``choices``,
    ``parse`` (a ``str -> value`` function used instead of the annotation), ``repeat`` (the
    option may be given several times; the field is the list of parsed values)."""
    metadata = {"help": help, **cli}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def comma_separated(value: str) -> tuple[str, ...]:
    """``a, b,c`` -> ``("a", "b", "c")``."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parser_of(kind: Any) -> Any:
    """The ``str -> value`` function for an annotation: its non-None type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    if typing.get_origin(kind) is tuple:
        return comma_separated
    return kind


def _option(field: dataclasses.Field, kind: Any) -> tuple[list[str], dict]:
    meta = field.metadata
    has_default = field.default is not dataclasses.MISSING
    default = field.default if has_default else None
    if field.default_factory is not dataclasses.MISSING:
        has_default, default = True, field.default_factory()
    options: dict[str, Any] = {"help": meta["help"]}
    options.update({key: meta[key] for key in ("metavar", "choices") if key in meta})
    if meta.get("positional"):
        return [field.name], {**options, "type": meta.get("parse", _parser_of(kind))}
    flag = meta.get("flag", "--" + field.name.replace("_", "-"))
    options["dest"] = field.name
    if kind is bool:
        return [flag], {**options, "action": "store_true"}
    options["type"] = meta.get("parse", _parser_of(kind))
    if meta.get("repeat"):
        options["action"] = "append"
    if not has_default:
        options["required"] = True
    else:
        options["default"] = default
        if isinstance(default, tuple) and default:
            options["help"] += f" (default: {','.join(map(str, default))})"
    return [flag], options


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option (or positional argument) per field of the dataclass ``cls``, each field
    declared with ``cli_field``."""
    kinds = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} has no command-line help (cli_field)")
        names, options = _option(field, kinds[field.name])
        parser.add_argument(*names, **options)


def from_options(cls: type, namespace: argparse.Namespace) -> Any:
    """The dataclass ``cls`` from the options ``add_options`` declared."""
    return cls(**{field.name: getattr(namespace, field.name) for field in dataclasses.fields(cls)})
