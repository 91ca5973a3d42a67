"""What a person running a long verb sees: one live line, the libraries' output in a file.

- ``step_output`` sends everything the work prints (the libraries' logs and progress bars
  included, at the file-descriptor level) to a log file, so the console holds pivotlab's
  own lines.
- ``Progress`` is how far the work has come (optimizer steps, questions, analyses), written
  by the work as it goes.
- ``notice`` is for pivotlab's own lines a person must see (a run resumed, rows skipped):
  they reach the console through the redirection.
- ``LiveLine`` redraws one line on a terminal every second from it: tqdm's bar (done /
  total, elapsed, the time left at the rate so far) and, for a study, the whole study's
  time left. Off a terminal (CI, a file) it writes nothing: the verb's own lines suffice.

The study (one log per step), ``train``, ``evaluate`` and ``analyze`` share them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from pivotlab.io import is_main_rank

# The console as it was while ``step_output`` sends descriptors 1 and 2 to a log: where
# ``notice`` writes. Process-wide, as the redirection itself is.
_console: TextIO | None = None


def notice(message: str) -> None:
    """A line pivotlab itself has for the person running it (a run resumed, rows skipped,
    a zoo part being trained): on stderr, and, while a step's output goes to a log file,
    on the console too (above the live line)."""
    print(message, file=sys.stderr, flush=True)
    if _console is not None:
        _console.write(("\r\x1b[K" if _console.isatty() else "") + message + "\n")
        _console.flush()


def clock(seconds: float) -> str:
    """``4m10s``."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


@dataclass
class Progress:
    """``done`` of ``total`` ``unit`` since ``began`` (total 0: the work has not said how
    much there is yet). Written by the work's thread, read by the live line's; each field
    is one assignment, so a reader sees a value that was true a moment ago."""

    unit: str = "it"
    done: int = 0
    total: int = 0
    began: float | None = None
    initial: int = 0  # done before ``began`` (a resumed run's steps): not in the rate

    def start(self, total: int, unit: str, done: int = 0) -> None:
        """``total`` units of work, ``done`` of them already, the rest begin now."""
        self.unit, self.total, self.initial = unit, total, done
        self.done, self.began = done, time.perf_counter()

    def advance(self, count: int = 1) -> None:
        """``count`` more units done."""
        self.done += count


def live_text(text: str, progress: Progress | None, began: float, tail: str = "") -> str:
    """The live line: ``text:``, then tqdm's bar once the work has said how much there is
    (else the time so far), then ``tail``."""
    now = time.perf_counter()
    if progress is not None and progress.total and progress.began is not None:
        meter = tqdm.format_meter(
            min(progress.done, progress.total),
            progress.total,
            now - progress.began,
            prefix=text,
            unit=progress.unit,
            initial=progress.initial,
        )
        return f"{meter}  {tail}".rstrip()
    return f"{text}: {clock(now - began)}  {tail}".rstrip()


class LiveLine:
    """On a terminal, ``live_text`` rewritten every second while the block runs, cleared at
    its end (the verb's own line follows); elsewhere, and in every process of a launched run
    but the main one, nothing. ``tail`` is called each time for text that changes (a
    study's time left)."""

    def __init__(
        self,
        console: TextIO,
        text: str,
        progress: Progress | None = None,
        tail: Callable[[], str] = lambda: "",
    ) -> None:
        self.console, self.text, self.progress, self.tail = console, text, progress, tail
        self.began = time.perf_counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(1.0):
            line = live_text(self.text, self.progress, self.began, self.tail())
            self.console.write(f"\r\x1b[K{line}")
            self.console.flush()

    def __enter__(self) -> LiveLine:
        # The processes of a launched run share one terminal: the main one draws.
        if self.console.isatty() and is_main_rank():
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
            self.console.write("\r\x1b[K")
            self.console.flush()


@contextlib.contextmanager
def step_output(path: Path) -> Iterator[TextIO]:
    """Everything written to this process's stdout and stderr while the block runs goes
    to ``path`` (appended): Python's prints, the libraries' loggers and progress bars, and
    C code alike, since the file descriptors themselves are redirected. Yields a stream to
    the console as it was, for the live line and ``notice``."""
    global _console
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    try:
        with path.open("a", encoding="utf-8", buffering=1) as log:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            try:
                # Python's own streams too, where they are not descriptors 1 and 2 (a
                # notebook, a test's capture).
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    outer, _console = _console, console
                    try:
                        yield console
                    finally:
                        _console = outer
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        for copy in saved.values():
            os.close(copy)
        console.close()


@contextlib.contextmanager
def quiet_verb(
    log: Path, text: str, progress: Progress | None = None, verbose: bool = False
) -> Iterator[None]:
    """A verb run on its own: what the libraries print goes to ``log`` behind a live line;
    with ``verbose``, to the console as it comes. A log the run left empty (a refusal
    before any work) is not kept; where the log's folder cannot be made, the output stays
    on the console and the verb's own check of its output folder says why."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        verbose = True
    if verbose:
        yield
        return
    new = not log.exists()
    try:
        with step_output(log) as console, LiveLine(console, text, progress):
            yield
    finally:
        if new and log.is_file() and log.stat().st_size == 0:
            log.unlink()


def log_beside(folder: Path | str) -> Path:
    """Where a verb writing ``folder`` keeps what the libraries printed: ``FOLDER.log``
    beside it, which outlives a run that fails before its folder holds anything (such a
    folder is removed) and is never taken for one of the run's own files."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.log"
