"""Result files that a crash never leaves half-written, JSON-lines reading, and the checks
that an output folder can take a run before the run starts.

- ``write_text_atomic`` / ``write_json_atomic`` / ``write_jsonl_atomic`` write a sibling
  temporary file, flush and fsync it, and ``os.replace`` it over the target: a reader sees
  the old file or the new one, never a mixture (POSIX rename is atomic within a folder).
- ``append_jsonl`` appends whole lines in one ``write`` call on an ``O_APPEND`` descriptor.
  A line cut short by a kill lacks its closing brace and newline, so it never parses as a
  valid JSON object; the next append drops such a tail before it writes, and
  ``complete_lines`` reads a log without it.
- ``read_jsonl`` reads records back, naming the file and line of one that is not a JSON
  object.
- ``staging_folder`` gives a folder beside a target to build it in and rename into place,
  and removes the staging folders that killed processes left beside it.
- ``removed_on_failure`` takes back a run folder that a failed command created before it
  produced anything.
- ``check_output`` fails in one line when a folder cannot be created or written, or when its
  disk has less free space than the caller's estimate.
- ``folder_lock`` holds an exclusive OS lock on a folder for one command: a second command
  on the same folder is refused (or waits), and a killed holder releases it.

Appends are not fsynced (one per logged step would cost more than the log is worth): they
survive the process being killed, not the machine losing power. Whole-file writes are.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pivotlab.errors import PivotlabError

MiB = 1024**2
GiB = 1024**3


class OutputError(PivotlabError):
    """An output folder that cannot be written, or a disk without room for the run."""


TEMPORARY_SUFFIX = ".tmp"  # ".<name>.<random>.tmp" beside the file being replaced
# ".<name>.partial-<pid>" (being written) and ".<name>.old-<pid>" (being replaced)
STAGING_KINDS = ("partial", "old")


def _file_mode() -> int:
    """What ``open()`` would give a new file under the current umask (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step: the old file stays until the new
    one is complete on disk."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (temporary sibling, fsync, rename)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        os.fchmod(handle, _file_mode())
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def remove_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``folder`` (one writer per
    folder: another process's write in progress would lose its file); returns them."""
    stale = [p for p in Path(folder).glob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def file_sha256(path: Path | str) -> str:
    """The sha256 of a file's bytes, hex (``hashlib.file_digest``: read in blocks)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def staging_folder(target: Path | str, kind: str = "partial") -> Path:
    """``.NAME.<kind>-PID`` beside ``target``, absent: a place to build ``target`` in (or to
    move an old one aside) before a rename publishes it. Staging folders beside ``target``
    whose process no longer runs (a kill, a crash) are removed first."""
    target = Path(target)
    for name in STAGING_KINDS:
        pattern = f".{glob.escape(target.name)}.{name}-*"
        for stale in target.parent.glob(pattern):
            pid = stale.name.rpartition("-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    staging = target.with_name(f".{target.name}.{kind}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


class FolderInUse(PivotlabError):
    """Another process holds the folder's lock; one line naming the folder and its pid."""


def lock_path(folder: Path | str) -> Path:
    """``.NAME.lock`` beside ``folder``: beside it, not in it, so that the folder's own
    checks (empty, or a run of this config) never see it and replacing the folder keeps it."""
    folder = Path(folder).resolve()
    if not folder.name:  # the file system's root
        return folder / ".pivotlab.lock"
    return folder.with_name(f".{folder.name}.lock")


def is_main_rank() -> bool:
    """Whether this is the main process of a launched run (``RANK`` 0), or not launched."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def folder_lock(
    folder: Path | str, wait: bool = False, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while the block runs (``fcntl.flock`` on
    ``lock_path(folder)``, which holds the holder's pid). Another holder: ``FolderInUse``
    naming the folder and its pid, or with ``wait`` a wait until it lets go (``log`` says
    so once). The OS releases the lock when its process ends, a ``kill -9`` included, so a
    resume finds the folder free; a holder that ends normally removes the file. Only the
    main process of a launched run (``RANK`` 0) takes it: the others write into the folder
    the main process holds."""
    if not is_main_rank():
        yield
        return
    path = lock_path(folder)
    told = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            # The folder cannot be made here either: the command's own check of its
            # output folder says why, in its own words, before any work.
            yield
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            if not wait:
                raise FolderInUse(
                    f"{folder}: in use by another pivotlab command (pid {holder}); "
                    "wait for it to finish or choose another folder"
                ) from None
            if log is not None and not told:
                log(f"{folder}: waiting for pid {holder}, which holds it")
                told = True
            time.sleep(1.0)
            continue
        if _same_file(descriptor, path):
            break
        os.close(descriptor)  # its holder removed the file as we opened it: open it anew
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Removed while still held, so a waiter that opened it sees it gone and reopens.
        path.unlink(missing_ok=True)
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def removed_on_failure(
    folder: Path | str, produced: Callable[[], bool] = lambda: False
) -> Iterator[None]:
    """Remove ``folder`` when the block fails, if the folder did not exist before it and
    ``produced()`` says it holds no results yet: a folder holding only a config would make
    the corrected command look like another run, and results made are never thrown away."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        yield
    except BaseException:
        if created and not produced():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def write_json_atomic(path: Path | str, value: object, **dumps: object) -> None:
    """``value`` as indented JSON (``dumps`` go to ``json.dumps``), written atomically."""
    write_text_atomic(path, json.dumps(value, **{"indent": 2, **dumps}) + "\n")


def jsonl_text(rows: Iterable[dict], ensure_ascii: bool = True) -> str:
    """One JSON object per line, each line ending in a newline."""
    return "".join(json.dumps(row, ensure_ascii=ensure_ascii) + "\n" for row in rows)


def write_jsonl_atomic(path: Path | str, rows: Iterable[dict], ensure_ascii: bool = True) -> None:
    """A whole JSON-lines file, written atomically."""
    write_text_atomic(path, jsonl_text(rows, ensure_ascii))


def _drop_partial_tail(descriptor: int) -> None:
    """Cut a last line that has no newline (a writer killed mid-line) off the file."""
    size = os.fstat(descriptor).st_size
    if size == 0 or os.pread(descriptor, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 64 * 1024)
        chunk = os.pread(descriptor, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(descriptor, start + newline + 1)
            return
        end = start
    os.ftruncate(descriptor, 0)


def append_jsonl(path: Path | str, rows: Iterable[dict], ensure_ascii: bool = True) -> None:
    """Append ``rows`` as complete lines in one write; a partial line left by an earlier,
    killed writer is dropped first so the new lines never fuse with it."""
    data = jsonl_text(rows, ensure_ascii).encode("utf-8")
    if not data:
        return
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _drop_partial_tail(descriptor)
        written = os.write(descriptor, data)
        # A regular file takes the whole buffer unless the disk is full; report that
        # rather than leave a line cut short without saying so.
        if written != len(data):
            raise OutputError(f"{path}: disk full while appending ({written} of {len(data)} bytes)")
    finally:
        os.close(descriptor)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line that is not one JSON object (malformed, cut
    short, not UTF-8) is reported with its number."""
    records = []
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PivotlabError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PivotlabError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise PivotlabError(f"{path}:{number}: expected a JSON object")
            records.append(record)
    return records


def complete_lines(path: Path | str) -> list[str]:
    """The lines of a log that ended in a newline: a last line a kill cut short is left out."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line.strip()]


def _existing_ancestor(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return Path(folder.anchor or ".")


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def check_output(folder: Path | str, need_bytes: int = 0, what: str = "output") -> None:
    """Fail early, in one line, when ``folder`` cannot be created or written, or when its
    disk has fewer than ``need_bytes`` free (``what`` says how the estimate was made).

    Writability is tested by creating and removing a file in the nearest existing folder:
    ``os.access`` says yes to root on read-only mounts and knows nothing of quotas.
    """
    folder = Path(folder)
    base = _existing_ancestor(folder.absolute())
    if not base.is_dir():
        raise OutputError(f"{folder}: cannot create it, {base} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".pivotlab-write-test-", dir=base)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"{folder}: cannot write in {base} ({reason})") from None
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise OutputError(
            f"{folder}: {_size(free)} free on its disk, {_size(need_bytes)} needed ({what}); "
            "free some space or choose another output folder"
        )
