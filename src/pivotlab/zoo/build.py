"""Build, cache, verify and list the zoo's parts.

    pivotlab zoo build [--parts enc-s,vfm] [--zoo default|tiny] [--cache DIR]
    pivotlab zoo list

- ``enc-s``, ``enc-m``: ``SiglipVisionModel``, contrastive-pretrained encoders about 2.4x
  apart in parameters (the roles of SigLIP2-B and So400m);
- ``vfm``: ``Dinov2Model``, the dense teacher (DINOv2's role for VIRAL);
- ``lm-s``, ``lm-m``: ``Qwen2ForCausalLM``, text-pretrained LMs (the fresh LLM of a
  transplant; the larger head).

Each part lives in ``<cache>/<zoo>/<part>-<key>/``: a ``save_pretrained`` folder (with its
image processor or tokenizer) and ``zoo_part.json``: spec, compute (FLOPs, seconds, samples),
quality (with the probe protocol it was measured under), and the sha256 of every file.
``key`` hashes the part's spec, the zoo's data recipe and the code versions, so a changed
recipe builds a new entry; an entry whose files no longer match their hashes (a truncated
download, a half-written copy) is rebuilt, never loaded. A part in training saves its
progress beside its entry every ten minutes (``.<part>-<key>.progress.pt``); a build killed
part-way resumes from it, to the same weights.

The rooms: ``recipes.py`` (specs and the zoos), ``entries.py`` (keys, cache folders,
manifests), ``data.py`` (the data a build shares), ``builders.py`` (training and measuring
each kind of part), ``shipping.py`` (the weights in the package), ``checks.py`` (the
orderings the zoo promises); this module builds, lists and finds parts with them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pivotlab import __version__
from pivotlab.console import notice
from pivotlab.io import file_sha256, folder_lock, staging_folder, write_json_atomic
from pivotlab.zoo import quality
from pivotlab.zoo.builders import quality_of_saved, train_part
from pivotlab.zoo.checks import has_probe_figures, probes_outdated
from pivotlab.zoo.data import BuildData
from pivotlab.zoo.entries import (
    MANIFEST,
    ZOO_VERSION,
    default_cache,
    entry_dir,
    part_key,
    publish,
    read_manifest,
    verify,
)
from pivotlab.zoo.recipes import PARTS, ZooConfig, ZooError, part_cost, zoo_recipe
from pivotlab.zoo.shipping import copy_shipped, shipped_dir


def _measure_again(zoo: ZooConfig, part: str, entry: Path, data: BuildData, seed: int) -> None:
    """Rewrite an intact entry's quality under today's probes; its weights are untouched."""
    manifest = read_manifest(entry)
    manifest["quality"] = quality_of_saved(zoo, part, entry, data, seed)
    manifest["probe_protocol"] = quality.PROBE_PROTOCOL
    write_json_atomic(entry / MANIFEST, manifest)


def progress_file(entry: Path) -> Path:
    """Where the training of ``entry`` keeps its progress until the entry is published
    (``train.Progress``): beside it, named by its key, so a changed recipe never resumes
    another's progress."""
    return entry.with_name(f".{entry.name}.progress.pt")


def _write_entry(
    zoo: ZooConfig,
    part: str,
    entry: Path,
    data: BuildData,
    seed: int,
    start: Path | None,
    log,
) -> dict:
    progress = progress_file(entry)
    if progress.is_file():
        log(f"zoo: {part} resumes from its saved progress ({progress})")
    model, companion, compute, measured = train_part(zoo, part, data, seed, start, progress)
    staging = staging_folder(entry)
    model.save_pretrained(staging)
    companion.save_pretrained(staging)
    files = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {
        "part": part,
        "zoo": zoo.name,
        "key": part_key(zoo, part, seed),
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "spec": asdict(zoo.parts[part]),
        "data": zoo.data_recipe(part),
        "seed": seed,
        "compute": asdict(compute),
        # A part that continues another zoo's: which one, and what that one cost.
        **({"started_from": _origin(read_manifest(start))} if start else {}),
        "quality": measured,
        **({"probe_protocol": quality.PROBE_PROTOCOL} if has_probe_figures(measured) else {}),
        "pivotlab_version": __version__,
        "zoo_version": ZOO_VERSION,
        "files": files,
    }
    write_json_atomic(staging / MANIFEST, manifest)
    publish(staging, entry)
    progress.unlink(missing_ok=True)
    return manifest


def _origin(manifest: dict) -> dict:
    return {k: manifest[k] for k in ("zoo", "part", "key", "compute")}


def build(
    parts: tuple[str, ...] = PARTS,
    zoo: str = "default",
    cache: Path | None = None,
    force: bool = False,
    seed: int = 0,
    log=print,
    log_cached: bool = True,
) -> dict[str, Path]:
    """Make sure each named part is in the cache (training what is missing, stale or
    corrupted; measuring again the quality of a part measured with older probes) and return
    its folder. ``log`` hears what is done to each part (with ``log_cached``, also that a
    part was found in the cache)."""
    config = zoo_recipe(zoo)
    unknown = [p for p in parts if p not in config.parts]
    if unknown:
        raise ZooError(f"unknown zoo part {unknown[0]!r}; parts are {', '.join(config.parts)}")
    cache = cache or default_cache()
    data = BuildData(config)
    folders = {}
    for part in parts:
        entry = entry_dir(config, part, cache, seed)
        # One builder per part: a second (another study on the same cache) waits, then
        # finds the part built.
        with folder_lock(entry, wait=True, log=log):
            _build_part(config, part, entry, data, seed, force, log, log_cached)
        folders[part] = entry
    return folders


def _build_part(
    config: ZooConfig,
    part: str,
    entry: Path,
    data: BuildData,
    seed: int,
    force: bool,
    log,
    log_cached: bool,
) -> None:
    """Verify, copy from the shipped weights, or train one part into ``entry``."""
    problem = "rebuild asked for" if force else verify(entry)
    if problem is None:
        if log_cached:
            log(f"zoo: {part} cached at {entry}")
    elif not force and copy_shipped(config, part, entry, seed):
        log(f"zoo: {part} copied from the weights shipped with pivotlab -> {entry}")
    else:
        if entry.exists():
            log(f"zoo: {part} cache entry {entry.name} is unusable ({problem}); rebuilding")
        else:
            cost = part_cost(config, part)
            log(f"zoo: {part} is not shipped for this recipe: training it ({cost})")
        start_zoo = getattr(config.parts[part], "start_from_zoo", "")
        start = None
        if start_zoo:
            cache = entry.parent.parent  # entries are <cache>/<zoo>/<part>-<key>
            start = build((part,), start_zoo, cache, seed=seed, log=log)[part]
        manifest = _write_entry(config, part, entry, data, seed, start, log)
        compute = manifest["compute"]
        cost = f"{compute['seconds']:.0f}s, {compute['flops']:.2e} FLOPs"
        log(f"zoo: built {part} ({cost}) -> {entry}")
    manifest = read_manifest(entry)
    if probes_outdated(manifest):
        _measure_again(config, part, entry, data, seed)
        log(
            f"zoo: {part} quality measured again (probe protocol "
            f"{manifest.get('probe_protocol', 1)} -> {quality.PROBE_PROTOCOL})"
        )


def part_path(part: str, zoo: str = "default", cache: Path | None = None, seed: int = 0) -> Path:
    """A part's folder, built on first use (what building it does is a ``notice``: a
    study or a training run that must copy or train a part says so)."""
    return build((part,), zoo, cache, seed=seed, log=notice, log_cached=False)[part]


def unbuilt(zoo: str = "default", cache: Path | None = None, seed: int = 0) -> dict[str, str]:
    """The parts of a zoo not in the cache, each with what ``zoo build`` would do for it."""
    config = zoo_recipe(zoo)
    cache = cache or default_cache()
    missing = {}
    for part in config.parts:
        if verify(entry_dir(config, part, cache, seed)) is None:
            continue
        if verify(shipped_dir(config, part, seed)) is None:
            missing[part] = "copied from the weights shipped with pivotlab (seconds)"
        else:
            missing[part] = f"trained here: {part_cost(config, part)}"
    return missing


def manifests(zoo: str = "default", cache: Path | None = None, seed: int = 0) -> dict[str, dict]:
    """The intact cached parts of a zoo (built with ``seed``) with their manifests."""
    config = zoo_recipe(zoo)
    cache = cache or default_cache()
    found = {}
    for part in config.parts:
        entry = entry_dir(config, part, cache, seed)
        if verify(entry) is None:
            found[part] = read_manifest(entry)
    return found
