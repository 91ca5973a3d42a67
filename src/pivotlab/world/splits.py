"""Generated splits kept in the cache, keyed by everything that determines them.

Training configs name a split by its ``WorldConfig`` fields instead of a folder; the first
run generates it, later runs (other stages, other seeds of a study) reuse it. The key hashes
the config and the generator version, so a changed recipe never reuses stale files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pivotlab.cache import cache_root
from pivotlab.world.generate import GENERATOR_VERSION, WorldConfig, generate


def split_key(cfg: WorldConfig) -> str:
    """A short hash of the split's config and the generator version."""
    identity = json.dumps({"config": cfg.to_json(), "generator": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def cached_split(cfg: WorldConfig, cache: Path | None = None, workers: int = 1) -> Path:
    """The folder of the split ``cfg``, generated on first use (splits are published
    atomically, so a folder with a manifest is complete)."""
    root = cache or cache_root("world")
    out = root / f"{cfg.split}-n{cfg.n}-s{cfg.seed}-{cfg.size}px-{split_key(cfg)}"
    if not (out / "manifest.json").is_file():
        generate(cfg, out, workers=workers)
    return out
