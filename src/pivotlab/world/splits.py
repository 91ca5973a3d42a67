"""Generated splits kept in the cache, keyed by everything that determines them.

Training configs name a split by its ``WorldConfig`` fields instead of a folder; the first
run generates it, later runs (other stages, other seeds of a study) reuse it. The key hashes
the config and the generator version, so a changed recipe never reuses stale files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pivotlab.cache import cache_root
from pivotlab.world.generate import GENERATOR_VERSION, WorldConfig, generate


def split_key(cfg: WorldConfig) -> str:
    """A short hash of the split's config and the generator version."""
    identity = json.dumps({"config": cfg.to_json(), "generator": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cached_split(cfg: WorldConfig, cache: Path | None = None, workers: int | None = None) -> Path:
    """The folder of the split ``cfg``, generated on first use (splits are published
    atomically, so a folder with a manifest is complete), by ``workers`` processes (default:
    one per usable core, at most 8; the files do not depend on it)."""
    root = cache or cache_root("world")
    out = root / f"{cfg.split}-n{cfg.n}-s{cfg.seed}-{cfg.size}px-{split_key(cfg)}"
    if not (out / "manifest.json").is_file():
        generate(cfg, out, workers=workers or min(usable_cores(), 8))
    return out
