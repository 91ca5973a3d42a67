"""Load a dataset in any of the three formats into validated records, under a policy.

    loaded = load(Source("llava", "data/llava.json", "data/images"), on_bad_record="skip")
    loaded.records, loaded.problems, loaded.counts()

Rows are read in order and checked in chunks: the structure of every row of a chunk first,
then the chunk's new images together on a few threads, then the token lengths. ``fail``
raises ``DataError`` at the first problem in file order; ``skip`` keeps going and returns
every problem beside the records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from pivotlab.data.formats import FORMATS, PARSERS, WORLD_FILES, Limits, Parser, parse_row
from pivotlab.data.reading import RawRow, read_rows
from pivotlab.data.records import DataError, Loaded, Problem, Record, check_policy
from pivotlab.data.tokens import Length, TokenCounter, length_finding
from pivotlab.images import ImageChecks

CHUNK = 256


@dataclass(frozen=True)
class Source:
    """A dataset: its ``format``, the file (or world split folder) at ``path``, and the
    folder image paths are relative to (``images``; a world split's own folder if None)."""

    format: str
    path: Path | str
    images: Path | str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")
        object.__setattr__(self, "path", Path(self.path).expanduser())
        images = self.images if self.images is not None else self._default_images()
        object.__setattr__(self, "images", Path(images).expanduser())

    def _default_images(self) -> Path:
        if self.format != "world":
            raise DataError(f"{self.path}: {self.format} data needs an image folder (images)")
        return Path(self.path)

    def check(self) -> None:
        """Raise ``DataError`` when the path or image folder cannot be read at all."""
        path = Path(self.path)
        if self.format == "world":
            if not (path / "manifest.json").is_file() or not (path / "vqa.jsonl").is_file():
                raise DataError(f"{path} is not a world split (no manifest.json / vqa.jsonl)")
        elif not path.is_file():
            raise DataError(f"{path}: no such data file")
        if not Path(self.images).is_dir():  # type: ignore[arg-type]
            raise DataError(f"{self.images}: no such image folder")

    def rows(self) -> Iterator[tuple[RawRow | Problem, Parser]]:
        """Every row of the dataset with the parser for its file."""
        path = Path(self.path)
        if self.format != "world":
            parser = PARSERS[self.format]
            yield from ((row, parser) for row in read_rows(path))
            return
        for name, kind in WORLD_FILES.items():
            if (path / name).is_file():
                yield from ((row, PARSERS[kind]) for row in read_rows(path / name))


def characters(record: Record) -> int:
    """Characters of the longest sequence a record trains on."""
    answers = [record.chosen] + ([record.rejected] if record.rejected is not None else [])
    later = sum(len(q) + len(a) for q, a in record.turns[1:])
    return len(record.prompt) + max(len(a) for a in answers) + later


class Validator:
    """Checks rows into records: structure and text, then the image, then the tokens."""

    def __init__(
        self,
        images: Path,
        limits: Limits | None = None,
        counter: TokenCounter | None = None,
        max_length: int | None = None,
        workers: int = 4,
    ) -> None:
        if max_length is not None and counter is None:
            raise DataError("max_length needs a processor to count tokens with")
        self.images = ImageChecks(images, workers)
        self.limits = limits or Limits()
        self.counter = counter
        self.max_length = max_length

    def check(
        self, rows: list[tuple[RawRow | Problem, Parser]]
    ) -> list[tuple[Record, int] | Problem]:
        """Each row as (record, length) or its first problem, in order."""
        parsed = [
            row if isinstance(row, Problem) else parse_row(row, parser, self.limits)
            for row, parser in rows
        ]
        self.images.run([r.image for r in parsed if isinstance(r, Record)])
        sound = [r for r in parsed if isinstance(r, Record) and self.images[r.image] is None]
        measured = iter(self.counter.lengths(sound) if self.counter is not None else [])
        return [r if isinstance(r, Problem) else self._finish(r, measured) for r in parsed]

    def _finish(self, record: Record, measured: Iterator[Length]) -> tuple[Record, int] | Problem:
        """The record with its length, or its image or token problem (``measured`` holds
        the token lengths of the records with good images, in order)."""
        finding = self.images[record.image]
        length = characters(record)
        if finding is None and self.counter is not None:
            tokens = next(measured)
            length = tokens.total
            if self.max_length is not None:
                finding = length_finding(tokens, self.max_length)
        if finding is None:
            return record, length
        kind, message = finding
        return Problem(record.file, record.line, kind, message, record.item, record.id)


def chunks(items: Iterable, size: int = CHUNK) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def screen(
    rows: Iterable[tuple[RawRow | Problem, Parser]],
    validator: Validator,
    on_bad_record: str = "fail",
) -> Loaded:
    """Rows checked in chunks; ``fail`` raises ``DataError`` at the first problem."""
    check_policy(on_bad_record)
    loaded = Loaded(length_unit="tokens" if validator.counter is not None else "characters")
    for chunk in chunks(rows):
        loaded.rows += len(chunk)
        for result in validator.check(chunk):
            if isinstance(result, Problem):
                if on_bad_record == "fail":
                    raise DataError(str(result))
                loaded.problems.append(result)
            else:
                loaded.records.append(result[0])
                loaded.lengths.append(result[1])
    return loaded


def load(
    source: Source,
    on_bad_record: str = "fail",
    limits: Limits | None = None,
    counter: TokenCounter | None = None,
    max_length: int | None = None,
    workers: int = 4,
) -> Loaded:
    """Every row of ``source`` checked (see the module docstring)."""
    source.check()
    validator = Validator(Path(source.images), limits, counter, max_length, workers)
    return screen(source.rows(), validator, on_bad_record)
