"""Training on datasets from outside the world: ``data.train`` / ``data.eval`` may name
``{format: llava|mmpr|world, path: ..., images: ...}`` instead of a world split.

The dataset is checked once by ``pivotlab.data`` (every row, every image) and written as a
split-like folder in the cache (``$PIVOTLAB_CACHE/data/<key>``): ``records.jsonl`` (the
records that passed, image paths absolute), ``problems.jsonl`` (every row that did not) and
``preferences.jsonl`` (the held-out DPO measure reads it). The key covers the spec, the
loader version and the data file's size and modification time, not the images: delete the
folder after changing images in place.

Each stage then takes its records from that folder (``dataset_records``), adding its own
checks: the align stage's plain template takes one caption per image (a multi-turn row is a
problem), and with ``train.max_length`` set every record is measured with the model's
processor (``pivotlab.data.tokens``). ``data.on_bad_record`` decides: ``fail`` (default)
stops the run before the model loads, naming the first problem; ``skip`` trains on the rest
and lists every skipped row in ``RUN/skipped.jsonl`` (``screen_data``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

from accelerate import PartialState

from pivotlab.cache import cache_root
from pivotlab.console import notice
from pivotlab.data import DataError, Limits, Problem, Record, Source, TokenCounter, load
from pivotlab.data.formats import WORLD_FILES
from pivotlab.data.records import write_skipped
from pivotlab.data.tokens import length_finding, load_processor
from pivotlab.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from pivotlab.train.config import StageConfig
from pivotlab.train.splits import DataFolders, DatasetSpec, SplitFolder

LOADER_VERSION = 1
MARKER = "dataset.json"
WORLD_KINDS = {"align": "caption", "full": "conversation", "post": "preference"}


def _source(spec: DatasetSpec) -> Source:
    return Source(spec.format, spec.path, spec.images)


def _fingerprint(source: Source) -> list:
    path = Path(source.path)
    files = [path / n for n in ("vqa.jsonl", "preferences.jsonl", "probes/captions.jsonl")]
    files = [f for f in files if f.is_file()] if path.is_dir() else [path]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _key(spec: DatasetSpec, source: Source) -> str:
    identity = {
        "format": spec.format,
        "images": str(Path(source.images).resolve()),
        "max_chars": spec.max_chars,
        "files": _fingerprint(source),
        "loader": LOADER_VERSION,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{spec.format}-{Path(source.path).stem}-{digest[:12]}"


def _record_row(record: Record, root: Path) -> dict:
    return {
        "id": record.id,
        "kind": record.kind,
        "image": str(root / record.image),
        "turns": [list(t) for t in record.turns],
        "rejected": record.rejected,
        "category": record.category,
        "file": record.file,
        "line": record.line,
        "item": record.item,
    }


def _record(row: dict) -> Record:
    return Record(**{**row, "turns": tuple(tuple(t) for t in row["turns"])})


def _preference_row(record: Record, root: Path) -> dict:
    return {
        "id": record.id,
        "image": str(root / record.image),
        "prompt": record.prompt,
        "chosen": record.chosen,
        "rejected": record.rejected,
    }


def dataset_split(spec: DatasetSpec, key: str) -> Path:
    """The checked folder of the dataset ``spec`` names (built on first use; see the
    module docstring). ``key`` names the config entry in errors."""
    source = _source(spec)
    try:
        source.check()
    except DataError as error:
        raise DataError(f"{key}: {error}") from None
    out = cache_root("data") / _key(spec, source)
    if (out / MARKER).is_file():
        return out
    loaded = load(source, "skip", limits=Limits(spec.max_chars))
    root = Path(source.images).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    write_jsonl_atomic(building / "records.jsonl", [_record_row(r, root) for r in loaded.records])
    write_jsonl_atomic(building / "problems.jsonl", [p.to_json() for p in loaded.problems])
    preferences = [_preference_row(r, root) for r in loaded.records if r.kind == "preference"]
    write_jsonl_atomic(building / "preferences.jsonl", preferences)
    summary = {"rows": loaded.rows, "valid": len(loaded.records), "problems": loaded.counts()}
    write_json_atomic(
        building / MARKER, {"spec": dataclasses.asdict(spec), "images": str(root), **summary}
    )
    try:
        os.rename(building, out)
    except OSError:  # another process published it first: keep theirs
        shutil.rmtree(building)
    return out


@lru_cache(maxsize=4)
def _counter(model: tuple, plain: bool) -> TokenCounter:
    """The stage model's processor as a token counter (loaded once per process);
    ``model`` is (init, vision, lm, image_size, select_strategy)."""
    init, vision, lm, size, strategy = model
    if init is not None:
        processor = load_processor(init)
    else:  # assembled from parts, as the stage will: the processor comes with the model
        from pivotlab.model import assemble

        processor = assemble(vision, lm, image_size=size, select_strategy=strategy)[1]
    return TokenCounter(processor, "plain" if plain else "chat")


def _stage_problem(stage: str, record: Record) -> Problem | None:
    if stage == "align" and len(record.turns) > 1:
        message = f"{len(record.turns)} turns; the align stage's plain template takes one caption"
        return Problem(record.file, record.line, "bad_turns", message, record.item, record.id)
    return None


def screened(cfg: StageConfig, split: SplitFolder) -> tuple[list[Record], list[Problem]]:
    """The records of a dataset folder this stage can train on, and every problem: the
    loader's, the stage's own, and the token lengths' when ``train.max_length`` is set.
    A world split holds all three kinds of record; a stage takes its own kind of them."""
    assert split.dataset is not None, f"{split.key} names no dataset"
    m = cfg.model
    model = (m.init, m.vision, m.lm, m.image_size, m.select_strategy)
    world = split.dataset.format == "world"
    kept, problems = _screened(str(split.path), world, cfg.stage, cfg.train.max_length, model)
    return list(kept), list(problems)


# A run screens its data before training, reads its records to train and its held-out
# records after: one pass per process, since counting tokens costs about 1 ms a record
# (an hour for a 3.2M-row mixture).
@lru_cache(maxsize=8)
def _screened(
    split_name: str, world: bool, stage: str, max_length: int | None, model: tuple
) -> tuple[tuple[Record, ...], tuple[Problem, ...]]:
    split = Path(split_name)
    records = [_record(row) for row in read_jsonl(split / "records.jsonl")]
    problems = [Problem(**row) for row in read_jsonl(split / "problems.jsonl")]
    if world:
        kind = WORLD_KINDS[stage]
        name = next(n for n, k in WORLD_FILES.items() if k == kind)
        records = [r for r in records if r.kind == kind]
        problems = [p for p in problems if p.file.endswith(name)]
    counter = _counter(model, stage == "align") if max_length is not None else None
    kept = []
    for record in records:
        problem = _stage_problem(stage, record)
        if problem is None and counter is not None:
            finding = length_finding(counter.length(record), max_length)
            if finding is not None:
                kind, message = finding
                problem = Problem(record.file, record.line, kind, message, record.item, record.id)
        if problem is None:
            kept.append(record)
        else:
            problems.append(problem)
    return tuple(kept), tuple(problems)


def _stage_record(stage: str, record: Record) -> dict:
    """A record in the form ``pivotlab.train.stage_data`` gives each stage."""
    base = {"id": record.id, "image": record.image, "category": record.category}
    if stage == "align":
        return base | {"caption": record.chosen}
    if stage == "post":
        return base | {
            "prompt": record.prompt,
            "chosen": record.chosen,
            "rejected": record.rejected,
        }
    if len(record.turns) > 1:
        return base | {"turns": [list(t) for t in record.turns]}
    return base | {"question": record.prompt, "answer": record.chosen}


def _refuse(key: str, problems: list[Problem]) -> DataError:
    return DataError(
        f"{key}: bad rows: {len(problems)}, the first: {problems[0]}; run 'pivotlab data "
        "check' to see them all, or set data.on_bad_record=skip to train without them"
    )


def dataset_records(cfg: StageConfig, split: SplitFolder) -> list[dict]:
    """The stage's records from a dataset folder, under ``data.on_bad_record``."""
    records, problems = screened(cfg, split)
    if problems and cfg.data.on_bad_record == "fail":
        raise _refuse(str(split.path), problems)
    return [_stage_record(cfg.stage, r) for r in records]


def screen_data(cfg: StageConfig, data: DataFolders, out: Path) -> None:
    """Check the stage's datasets (``data``, resolved) before anything loads: under
    ``fail`` raise at the first problem; under ``skip`` write every skipped row to
    ``out/skipped.jsonl`` (with the split it came from) and say how many on stderr. World
    splits pass as they are."""
    rows, notes = [], []
    for split in (data.train, data.eval):
        if split is None or split.dataset is None:
            continue
        _, problems = screened(cfg, split)
        if problems and cfg.data.on_bad_record == "fail":
            raise _refuse(split.key, problems)
        rows += [p.to_json() | {"split": split.key.removeprefix("data.")} for p in problems]
        if problems:
            counts = ", ".join(f"{k} {n}" for k, n in Counter(p.kind for p in problems).items())
            notes.append(f"{split.key}: skipping {len(problems)} rows ({counts})")
    if rows and PartialState().is_main_process:
        path = write_skipped(rows, out)
        notice("\n".join([*notes, f"skipped rows listed in {path}"]))
