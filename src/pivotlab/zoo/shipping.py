"""The zoo parts that ship with the package (``zoo/weights/``), copied into the cache on
first use instead of being trained."""

from __future__ import annotations

import shutil
from pathlib import Path

from pivotlab.io import staging_folder
from pivotlab.zoo.entries import default_cache, entry_dir, publish, verify
from pivotlab.zoo.recipes import ZooConfig, ZooError, zoo_recipe

# Built parts that ship with the package (``ship``), copied into the cache on first use.
SHIPPED = Path(__file__).parent / "weights"


def shipped_dir(zoo: ZooConfig, part: str, seed: int = 0) -> Path:
    """Where the package keeps a built part: ``pivotlab/zoo/weights/<zoo>/<part>-<key>``."""
    return SHIPPED / zoo.name / entry_dir(zoo, part, Path(), seed).name


def copy_shipped(zoo: ZooConfig, part: str, entry: Path, seed: int) -> bool:
    """Copy the package's own build of ``part`` into the cache, when it ships one for this
    exact recipe (same key) and its files match their hashes; False otherwise."""
    shipped = shipped_dir(zoo, part, seed)
    if verify(shipped) is not None:
        return False
    staging = staging_folder(entry)
    shutil.copytree(shipped, staging)
    publish(staging, entry)
    return True


def ship(part: str, zoo: str = "default", cache: Path | None = None, seed: int = 0) -> Path:
    """Copy a built, intact cache entry into the package's weights (what a maintainer runs
    after ``pivotlab zoo build``), so a fresh install copies instead of training it."""
    config = zoo_recipe(zoo)
    entry = entry_dir(config, part, cache or default_cache(), seed)
    problem = verify(entry)
    if problem is not None:
        raise ZooError(f"zoo: {part} is not built in the cache ({problem}); build it first")
    target = shipped_dir(config, part, seed)
    for stale in target.parent.glob(f"{part}-*"):
        shutil.rmtree(stale)
    shutil.copytree(entry, target)
    return target
