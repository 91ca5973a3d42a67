"""Atomic result files, whole-line appends, and the early output-folder checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import namedtuple
from pathlib import Path

import pytest

from pivotlab import io
from pivotlab.io import (
    FolderInUse,
    OutputError,
    append_jsonl,
    check_output,
    complete_lines,
    folder_lock,
    read_jsonl,
    remove_temporaries,
    removed_on_failure,
    staging_folder,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from tests.conftest import hold_folder_lock

Usage = namedtuple("Usage", "total used free")


class _Crash(RuntimeError):
    pass


def _crash_after_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file ``io`` opens writes half of what it is given, then the 'process' dies."""
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise _Crash("killed mid-write")

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))


def test_a_crash_mid_write_leaves_the_old_file_and_no_half_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"steps": 3, "loss": 0.5})
    before = target.read_bytes()
    _crash_after_half(monkeypatch)
    with pytest.raises(_Crash):
        write_json_atomic(target, {"steps": 4, "loss": 0.25, "heldout": {"x": 1.0}})
    assert target.read_bytes() == before
    assert json.loads(target.read_text()) == {"steps": 3, "loss": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_crash_on_a_first_write_leaves_no_file(tmp_path, monkeypatch) -> None:
    _crash_after_half(monkeypatch)
    with pytest.raises(_Crash):
        write_jsonl_atomic(tmp_path / "records.jsonl", [{"id": i} for i in range(100)])
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_round_trip(tmp_path) -> None:
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    write_jsonl_atomic(tmp_path / "b.jsonl", [{"a": "é"}, {"b": 2}], ensure_ascii=False)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert read_jsonl(tmp_path / "b.jsonl") == [{"a": "é"}, {"b": 2}]
    assert (tmp_path / "b.jsonl").read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'


def test_a_cut_line_is_never_read_and_the_next_append_does_not_fuse_with_it(tmp_path) -> None:
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, [{"step": 1, "value": 0.5}, {"step": 2, "value": 0.25}])
    whole = log.read_bytes()
    # A writer killed mid-line: every cut of a JSON-object line is invalid JSON.
    line = json.dumps({"step": 3, "value": 0.125})
    for cut in range(1, len(line)):
        with pytest.raises(json.JSONDecodeError):
            json.loads(line[:cut])
    with log.open("ab") as handle:
        handle.write(line[:10].encode())
    assert [json.loads(x) for x in complete_lines(log)] == [
        {"step": 1, "value": 0.5},
        {"step": 2, "value": 0.25},
    ]
    append_jsonl(log, [{"step": 3, "value": 0.125}])
    assert log.read_bytes() == whole + (line + "\n").encode()
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]


def test_a_log_that_is_only_a_cut_line_is_emptied_before_the_append(tmp_path) -> None:
    log = tmp_path / "samples.jsonl"
    log.write_bytes(b'{"step": 1, "ids": ["a", "b"')
    assert complete_lines(log) == []
    append_jsonl(log, [{"step": 1, "ids": ["a", "b"]}])
    assert read_jsonl(log) == [{"step": 1, "ids": ["a", "b"]}]


def test_temporaries_a_kill_left_are_removed(tmp_path) -> None:
    (tmp_path / ".summary.json.abc123.tmp").write_text('{"half')
    (tmp_path / "summary.json").write_text("{}")
    removed = remove_temporaries(tmp_path)
    assert [p.name for p in removed] == [".summary.json.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_an_output_folder_under_a_file_fails_in_one_line(tmp_path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(OutputError, match=r"runs/out: cannot create it, .*runs is a file"):
        check_output(tmp_path / "runs" / "out")


def test_a_read_only_folder_fails_in_one_line(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:  # root (and some file systems) ignore the mode bits: nothing to test then
            (locked / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("chmod does not stop this user from writing (running as root?)")
        with pytest.raises(OutputError, match=r"locked/run: cannot write in .*locked \("):
            check_output(locked / "run")
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o700)


def test_too_little_free_space_fails_naming_the_folder_and_the_numbers(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * io.GiB, 0, 300 * io.MiB))
    check_output(tmp_path / "run", 200 * io.MiB, "estimate")
    with pytest.raises(OutputError) as error:
        check_output(tmp_path / "run", 3 * io.GiB, "2 checkpoints")
    message = str(error.value)
    assert "\n" not in message
    assert f"{tmp_path / 'run'}: 300.0 MiB free on its disk, 3.00 GiB needed (2 checkpoints)" in (
        message
    )
    assert not (tmp_path / "run").exists()  # the check creates nothing
    assert list(tmp_path.iterdir()) == []  # and leaves no probe file behind


def test_the_space_check_reads_the_disk_of_the_nearest_existing_folder(
    tmp_path, monkeypatch
) -> None:
    asked: list[Path] = []

    def usage(path) -> Usage:
        asked.append(Path(path))
        return Usage(1, 0, 1)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    check_output(tmp_path / "a" / "b" / "c")
    assert asked == [tmp_path]


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory) -> Path:
    from pivotlab.world import WorldConfig, generate

    out = tmp_path_factory.mktemp("io") / "split"
    generate(WorldConfig(split="test", n=2, seed=0, size=32, probe_n=0), out)
    return out


@pytest.mark.parametrize("verb", ["world generate", "evaluate", "analyze"])
def test_the_verbs_fail_early_on_a_full_disk(
    verb, two_scenes, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from pivotlab import cli

    out = tmp_path / "out"
    argv = {
        "world generate": ["world", "generate", "--n", "4", "--size", "32"],
        # A real model folder: the check of what it holds comes first, the disk before loading.
        "evaluate": ["evaluate", "--model", str(tiny_model_dir), "--data", str(two_scenes)],
        "analyze": [
            "analyze",
            "linear-probe",
            "--encoder",
            "random:zoo:enc-s",
            "--data",
            str(two_scenes),
            "--eval-data",
            str(tmp_path / "eval"),
        ],
    }[verb]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * io.GiB, 0, 1 * io.MiB))
    assert cli.main([*argv, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"pivotlab: error: {out}: 1.0 MiB free on its disk, ")
    assert "\n" not in message and "needed" in message
    assert list(tmp_path.iterdir()) == []  # nothing loaded, nothing written


def test_files_are_written_with_the_umask_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    modes = [(tmp_path / name).stat().st_mode & 0o777 for name in ("a.txt", "b.txt")]
    assert modes[0] == modes[1] == 0o644


def test_staging_folder_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    target = tmp_path / "split"
    dead = tmp_path / ".split.partial-999999999"  # no process has this pid
    alive = tmp_path / f".split.old-{os.getppid()}"  # the test runner's parent is running
    other = tmp_path / ".other.partial-999999999"  # beside another target
    for folder in (dead, alive, other):
        folder.mkdir()
    staging = staging_folder(target)
    assert staging == tmp_path / f".split.partial-{os.getpid()}" and not staging.exists()
    assert not dead.exists() and alive.exists() and other.exists()


def test_a_failed_block_takes_back_only_the_empty_folder_it_created(tmp_path: Path) -> None:
    made, kept, existing = tmp_path / "made", tmp_path / "kept", tmp_path / "existing"
    existing.mkdir()
    for folder, produced in ((made, False), (kept, True), (existing, False)):
        with pytest.raises(RuntimeError), removed_on_failure(folder, lambda p=produced: p):
            folder.mkdir(exist_ok=True)
            (folder / "config.json").write_text("{}")
            raise RuntimeError("failed before training")
    assert not made.exists() and kept.exists() and existing.exists()


# ---------------------------------------------------------------------------- folder lock
def test_a_second_command_on_a_locked_folder_is_refused_naming_thehold_folder_lock(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run"
    holder = hold_folder_lock(folder, 30)
    try:
        refused = rf"{folder}: in use .*\(pid {holder.pid}\)"
        with pytest.raises(FolderInUse, match=refused), folder_lock(folder):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = hold_folder_lock(folder, 30)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with folder_lock(folder):
        assert io.lock_path(folder).read_text().strip() == str(os.getpid())


def test_waiting_for_a_lock_says_so_once_and_then_holds_it(tmp_path: Path) -> None:
    folder = tmp_path / "entry"
    holder = hold_folder_lock(folder, 1.5)
    said: list[str] = []
    with folder_lock(folder, wait=True, log=said.append):
        assert holder.poll() is not None  # the holder had finished
    assert said == [f"{folder}: waiting for pid {holder.pid}, which holds it"]


def test_the_lock_sits_beside_the_folder_and_goes_with_itshold_folder_lock(tmp_path: Path) -> None:
    """A run folder's own checks (empty, or a run of this config) must never see it, and a
    command that ends leaves nothing behind."""
    with folder_lock(tmp_path / "run"):
        assert io.lock_path(tmp_path / "run") == tmp_path / ".run.lock"
        assert not (tmp_path / "run").exists()
    assert list(tmp_path.iterdir()) == []


def test_only_a_launched_runs_main_process_takes_the_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with folder_lock(tmp_path / "run"):
        assert not io.lock_path(tmp_path / "run").exists()
