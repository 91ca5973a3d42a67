"""Where a zoo part lives in the cache, its key, its manifest, and whether it is intact.

Each part lives in ``<cache>/<zoo>/<part>-<key>/``: a ``save_pretrained`` folder (with its
image processor or tokenizer) and ``zoo_part.json``, its manifest, which lists the sha256 of
every file. ``key`` hashes the part's spec, the zoo's data recipe and the code versions; an
entry whose files no longer match their hashes is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pivotlab.cache import cache_root
from pivotlab.io import file_sha256
from pivotlab.world.generate import GENERATOR_VERSION
from pivotlab.zoo.recipes import ZooConfig, spec_identity, zoo_recipe

# Part of every cache key: bump it whenever a pretraining recipe changes in code (an
# objective, an initialisation, the data mix), so stale entries are never reused.
ZOO_VERSION = "3"
MANIFEST = "zoo_part.json"


def default_cache() -> Path:
    """``$PIVOTLAB_CACHE/zoo``, else ``$XDG_CACHE_HOME/pivotlab/zoo`` (default ``~/.cache``)."""
    return cache_root("zoo")


def part_key(zoo: ZooConfig, part: str, seed: int = 0) -> str:
    """Hash of everything that determines a part's weights (for a part that starts from
    another zoo's, that part's key too)."""
    spec = zoo.parts[part]
    identity = {
        "part": part,
        "seed": seed,
        "spec": spec_identity(spec),
        "data": zoo.data_recipe(part),
        "zoo_version": ZOO_VERSION,
        "world_generator_version": GENERATOR_VERSION,
    }
    start = getattr(spec, "start_from_zoo", "")
    if start:
        identity["start"] = part_key(zoo_recipe(start), part, seed)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def entry_dir(zoo: ZooConfig, part: str, cache: Path, seed: int = 0) -> Path:
    """The folder of a part built with ``seed`` in the cache ``cache``."""
    return cache / zoo.name / f"{part}-{part_key(zoo, part, seed)[:12]}"


def read_manifest(entry: Path) -> dict:
    """The manifest of an entry (check it with ``verify`` first)."""
    return json.loads((entry / MANIFEST).read_text())


def verify(entry: Path) -> str | None:
    """``None`` if the entry is complete and intact, else what is wrong with it."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return "no manifest"
    try:
        manifest = read_manifest(entry)
    except json.JSONDecodeError:
        return "unreadable manifest"
    for name, digest in manifest.get("files", {}).items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its sha256"
    return None if manifest.get("files") else "manifest lists no files"


def publish(staging: Path, entry: Path) -> None:
    """Put a finished staging folder in the entry's place, replacing what was there."""
    if entry.exists():
        shutil.rmtree(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(entry)
