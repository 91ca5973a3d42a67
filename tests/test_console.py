"""What a person running a long verb sees: the libraries' output in a file, one live line."""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

import pytest

from pivotlab.console import (
    LiveLine,
    Progress,
    live_text,
    log_beside,
    notice,
    quiet_verb,
    step_output,
)


def test_step_output_takes_prints_loggers_and_raw_writes_into_its_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A library's logger holds the stderr it found at import: only redirecting the file
    descriptors catches it, and C code writing to fd 1 alike."""
    library = logging.getLogger("a-library")
    # The stream a library's handler holds in a real run: descriptor 2 itself.
    library.addHandler(logging.StreamHandler(open(2, "w", closefd=False)))  # noqa: SIM115
    library.propagate = False
    log = tmp_path / "logs" / "step.log"
    with step_output(log) as console:
        print("a print")
        library.warning("a library's warning")
        os.write(1, b"written to fd 1\n")
        console.write("to the console\n")
    print("after the step")
    captured = capfd.readouterr()
    assert "to the console" in captured.err and "after the step" in captured.out
    assert "a print" not in captured.out + captured.err
    kept = log.read_text()
    assert all(s in kept for s in ("a print", "a library's warning", "written to fd 1"))


class _Terminal(io.StringIO):
    """A console that says it is a terminal, keeping what was drawn."""

    def isatty(self) -> bool:
        return True


def test_the_live_line_shows_done_of_total_and_the_time_left_at_the_rate_so_far() -> None:
    progress = Progress()
    assert live_text("[2/9] seed0/full", progress, time.perf_counter()).startswith(
        "[2/9] seed0/full: 0m00s"
    )
    progress.start(400, "steps")
    progress.began = time.perf_counter() - 90  # 120 steps in 90 s: 210 s for the other 280
    progress.advance(120)
    line = live_text("[2/9] seed0/full", progress, progress.began, "(study: about 12m00s left)")
    assert "120/400" in line and "01:30<03:30" in line and "steps" in line
    assert line.endswith("(study: about 12m00s left)")


def test_a_resumed_runs_rate_counts_only_its_own_steps() -> None:
    progress = Progress()
    progress.start(400, "steps", done=200)  # resumed from a checkpoint at step 200
    progress.began = time.perf_counter() - 60
    progress.done = 260  # 60 steps in 60 s: 140 s for the other 140
    assert "260/400" in live_text("training", progress, progress.began)
    assert "01:00<02:20" in live_text("training", progress, progress.began)


def test_the_live_line_is_drawn_on_a_terminal_only_and_cleared_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    terminal, plain = _Terminal(), io.StringIO()
    for console in (terminal, plain):
        with LiveLine(console, "evaluating", Progress()):
            time.sleep(1.3)
    assert "evaluating: 0m01s" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\x1b[K")
    assert plain.getvalue() == ""


def test_only_the_main_process_of_a_launched_run_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    terminal = _Terminal()
    with LiveLine(terminal, "training", Progress()):
        time.sleep(1.3)
    assert terminal.getvalue() == ""


def test_a_quiet_verb_keeps_the_libraries_output_in_its_log_and_verbose_shows_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = log_beside(tmp_path / "run")
    assert log == tmp_path / "run.log"
    with quiet_verb(log, "training"):
        os.write(2, b"Loading weights 100%\n")
    assert "Loading weights" not in capfd.readouterr().err
    assert "Loading weights" in log.read_text()
    with quiet_verb(log, "training", verbose=True):
        os.write(2, b"Casting the dataset\n")
    assert "Casting the dataset" in capfd.readouterr().err


def test_a_verb_refused_before_any_work_leaves_no_log(tmp_path: Path) -> None:
    log = log_beside(tmp_path / "run")
    with pytest.raises(ValueError), quiet_verb(log, "training"):
        raise ValueError("a bad config")
    assert not log.exists()


def test_a_notice_reaches_the_console_through_the_redirection_and_the_log_too(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A resume or skipped rows are the person's to see, whatever the libraries' say."""
    log = tmp_path / "step.log"
    with step_output(log):
        notice("resuming from RUN/checkpoint-2 (step 2)")
    assert "resuming from RUN/checkpoint-2" in capfd.readouterr().err
    assert "resuming from RUN/checkpoint-2" in log.read_text()
    notice("after the step")
    assert capfd.readouterr().err == "after the step\n"
