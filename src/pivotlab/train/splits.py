"""A stage's data splits as its config names them, parsed once, when the config is built.

``data.train`` / ``data.eval`` hold one of three things, written as the user wrote them (so
``config.yaml`` and the comparison of a rerun's config are unchanged); each is parsed here
into a ``DataSplit`` that says which:

- a world split folder (``RUN/../train``): a path;
- world fields (``{split: train, n: 2000, size: 64, seed: 0}``, a ``preset`` key starting
  from that world preset): checked as a ``WorldConfig``, generated into the cache on first use;
- a dataset outside the world (``{format: llava|mmpr|world, path: ..., images: ...}``, a
  ``DatasetSpec``): checked row by row into the cache (``train/external.py``).

Resolving a split to the folder its records are read from (generating, checking) is a run's
work, done once per run: ``train/stage_data.py``'s ``resolve_split``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotlab.configtree import ConfigError, build_dataclass
from pivotlab.data.formats import DEFAULT_MAX_CHARS, FORMATS
from pivotlab.world.generate import WorldConfig, WorldConfigError

# World fields given as YAML lists that ``WorldConfig`` holds as tuples.
TUPLE_FIELDS: tuple[str, ...] = ("tasks", "kind_weights")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset outside the world as a stage's data: its ``format``, the data file (or
    world split folder) at ``path``, the folder ``images`` are relative to (a world
    split's own folder when omitted), and the character limit per text field."""

    format: str
    path: str
    images: str | None = None
    max_chars: int = DEFAULT_MAX_CHARS


@dataclass(frozen=True)
class DataSplit:
    """One data entry of a config, parsed: exactly one of a world split ``folder``, the
    ``world`` it names by fields, or a ``dataset``. ``key`` names the entry
    (``data.train``) in errors."""

    key: str
    folder: Path | None = None
    world: WorldConfig | None = None
    dataset: DatasetSpec | None = None


@dataclass(frozen=True)
class SplitFolder:
    """A split resolved to the folder its records are read from: a world split's, or the
    cache folder its ``dataset`` was checked into (``train/external.py``). ``key`` names
    the config entry in errors."""

    key: str
    path: Path
    dataset: DatasetSpec | None = None


@dataclass(frozen=True)
class DataFolders:
    """A stage's splits resolved, once per run: the training split's folder and the
    held-out split's (None without ``data.eval``)."""

    train: SplitFolder
    eval: SplitFolder | None


def parse_split(value: str | dict[str, Any] | None, key: str) -> DataSplit | None:
    """The ``DataSplit`` a config entry names (None for none); ``ConfigError`` naming
    ``key`` for fields no world or dataset has."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return DataSplit(key, folder=Path(value).expanduser())
    if "format" in value:
        return DataSplit(key, dataset=_dataset_spec(value, key))
    return DataSplit(key, world=_world_config(value, key))


def _dataset_spec(value: dict[str, Any], key: str) -> DatasetSpec:
    spec = build_dataclass(DatasetSpec, value, key)
    if spec.format not in FORMATS:
        raise ConfigError(f"{key}.format is {spec.format!r}; expected one of {', '.join(FORMATS)}")
    if spec.images is None and spec.format != "world":
        raise ConfigError(f"{key}.images is required for {spec.format} data")
    if spec.max_chars <= 0:
        raise ConfigError(f"{key}.max_chars must be positive, got {spec.max_chars}")
    return spec


def _world_config(value: dict[str, Any], key: str) -> WorldConfig:
    fields = {k: tuple(v) if k in TUPLE_FIELDS else v for k, v in value.items()}
    preset = fields.pop("preset", "default")
    try:
        return WorldConfig.from_preset(preset, **fields)
    except (TypeError, WorldConfigError) as error:
        raise ConfigError(f"{key}: {error}") from None
