"""Which study steps are finished, judged by their recorded outputs.

Each finished step leaves ``RUN/steps/<name>.json``: the step's spec fingerprint, the
files it produced with their sizes and sha256, its wall time and FLOPs. A step counts as
done only when that record exists, its fingerprint matches the step as configured now,
and every recorded file is still there with the same size and hash; a folder that merely
exists (a step killed half-way) is not done and is run again. Written by hand: the
pipeline is a fixed, small graph, and a workflow engine would add a dependency for what
one JSON file per step does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivotlab.io import file_sha256, write_json_atomic

# Files larger than this are checked by size and a hash of their first and last MiB:
# re-hashing multi-GB checkpoints on every resume would cost minutes at paper scale.
FULL_HASH_LIMIT = 64 * 2**20
_CHUNK = 2**20


def file_digest(path: Path) -> str:
    """sha256 of a file (of its first and last MiB plus its size when it is large)."""
    size = path.stat().st_size
    if size <= FULL_HASH_LIMIT:
        return file_sha256(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_CHUNK))
        handle.seek(size - _CHUNK)
        digest.update(handle.read(_CHUNK))
    digest.update(str(size).encode())
    return digest.hexdigest()


def fingerprint(spec: Any) -> str:
    """A stable hash of a step's JSON-able spec."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _files(outputs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for output in outputs:
        if output.is_dir():
            found += sorted(p for p in output.rglob("*") if p.is_file())
        elif output.is_file():
            found.append(output)
    return found


@dataclass
class StepRecord:
    """What a finished step left: its spec's fingerprint, files, cost and results."""

    name: str
    fingerprint: str
    files: dict[str, dict[str, Any]]
    wall_s: float
    flops: float | None = None
    results: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """The ``RUN/steps/`` records of one study run."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.folder = run / "steps"

    def _path(self, name: str) -> Path:
        return self.folder / f"{name.replace('/', '--')}.json"

    def finished(self, name: str, spec_fingerprint: str) -> StepRecord | None:
        """The step's record when its outputs are intact and its spec unchanged."""
        path = self._path(name)
        if not path.is_file():
            return None
        try:
            record = StepRecord(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            return None
        if record.fingerprint != spec_fingerprint or not record.files:
            return None
        for relative, seen in record.files.items():
            file = self.run / relative
            if not file.is_file() or file.stat().st_size != seen["size"]:
                return None
            if file_digest(file) != seen["sha256"]:
                return None
        return record

    def record(
        self,
        name: str,
        spec_fingerprint: str,
        outputs: list[Path],
        wall_s: float,
        flops: float | None = None,
        results: dict[str, Any] | None = None,
    ) -> StepRecord:
        """Write the step's record (atomically: a crash never leaves a valid half file)."""
        files = {
            str(p.relative_to(self.run)): {"size": p.stat().st_size, "sha256": file_digest(p)}
            for p in _files(outputs)
        }
        record = StepRecord(name, spec_fingerprint, files, wall_s, flops, results or {})
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        write_json_atomic(path, record.__dict__, indent=1)
        return record
