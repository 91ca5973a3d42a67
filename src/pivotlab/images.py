"""Image paths checked against the image root, and image files checked by really reading them.

A path must stay inside the root: absolute paths, ``..`` and symlinks that resolve outside
are refused (a dataset file must not make training read arbitrary files). A file must exist,
be non-empty, pass PIL's ``verify()`` (structure and checksums) and decode with ``load()``:
``verify`` alone misses a PNG cut after its last complete chunk, ``load`` alone misses some
checksum errors.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from pivotlab.errors import PivotlabError, one_line


class ImageError(PivotlabError):
    """An image a dataset names that may not or cannot be read."""


Finding = tuple[str, str] | None  # (problem kind, message), or None for a good image


def locate(root: Path, name: str) -> tuple[Path | None, Finding]:
    """The file ``name`` names under ``root`` (resolved), or why it may not be read."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        return None, ("path_escape", f"image path {name!r} is absolute; it must be relative")
    if ".." in PurePosixPath(name).parts:
        return None, ("path_escape", f"image path {name!r} leaves the image root through '..'")
    resolved = (root / name).resolve()
    if not resolved.is_relative_to(root):
        return None, (
            "path_escape",
            f"image path {name!r} is a symlink to {resolved}, outside the image root",
        )
    return resolved, None


def _read(path: Path, name: str) -> tuple[Image.Image | None, Finding]:
    """The decoded image at ``path``, or why it cannot be used."""
    if not path.exists():
        return None, ("image_missing", f"image {name!r} not found under the image root")
    if not path.is_file():
        return None, ("image_unreadable", f"image {name!r} is not a file")
    if path.stat().st_size == 0:
        return None, ("image_empty", f"image {name!r} is an empty (zero-byte) file")
    try:
        with Image.open(path) as image:
            image.verify()
        image = Image.open(path)
        image.load()
    # PIL's decoders raise many types for damaged files (OSError, SyntaxError, ValueError,
    # EOFError, struct.error...); any of them means the image cannot be trained on.
    except Exception as error:
        reason = one_line(str(error)) or type(error).__name__
        return None, ("image_unreadable", f"image {name!r} cannot be read by PIL ({reason})")
    return image, None


def inspect_file(path: Path, name: str) -> Finding:
    """Why the image file at ``path`` cannot be used, or None."""
    image, finding = _read(path, name)
    if image is not None:
        image.close()
    return finding


def check_image(root: Path, name: str) -> Finding:
    """Why image ``name`` under ``root`` (an absolute, resolved folder) cannot be used, or
    None when it is inside the root and PIL reads it completely."""
    path, finding = locate(root, name)
    return finding if path is None else inspect_file(path, name)


def open_image(root: Path | str, name: str, where: str, mode: str | None = "RGB") -> Image.Image:
    """Image ``name`` under ``root``, read only after the checks ``data check`` makes
    (inside the root, present, complete), converted to ``mode`` (None keeps a mask's own).

    Every verb that reads a dataset's images reads them here. Raises ``ImageError``
    starting with ``where`` (the file and line that named the image).
    """
    path, finding = locate(Path(root).resolve(), name)
    image = None
    if path is not None:
        image, finding = _read(path, name)
    if finding is not None or image is None:
        raise ImageError(f"{where}: {finding[1] if finding else name}")
    with image:
        return image.convert(mode) if mode else image.copy()


def first_unusable(root: Path, names: list[str]) -> tuple[int, str] | None:
    """The index of the first of ``names`` that cannot be used under ``root``, with why;
    None when every one is inside the root and reads completely (checked on threads)."""
    checks = ImageChecks(root)
    checks.run(names)
    for index, name in enumerate(names):
        finding = checks[name]
        if finding is not None:
            return index, finding[1]
    return None


class ImageChecks:
    """Image checks remembered per path (rows share images), run on a few threads: PIL
    decodes with the GIL released, so threads overlap the reads and decodes."""

    def __init__(self, root: Path, workers: int = 4) -> None:
        self.root = root.resolve()
        self.workers = workers
        self._found: dict[str, Finding] = {}

    def run(self, names: list[str]) -> None:
        """Check every name not checked yet."""
        new = list(dict.fromkeys(n for n in names if n not in self._found))
        if not new:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            results = pool.map(lambda n: check_image(self.root, n), new)
            self._found.update(zip(new, results, strict=True))

    def __getitem__(self, name: str) -> Finding:
        if name not in self._found:
            self.run([name])
        return self._found[name]
