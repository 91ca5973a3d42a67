"""Where pivotlab keeps what it builds once and reuses: zoo parts, generated world splits."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """``$PIVOTLAB_CACHE/<kind>``, else ``$XDG_CACHE_HOME/pivotlab/<kind>`` (default
    ``~/.cache``)."""
    if os.environ.get("PIVOTLAB_CACHE"):
        return Path(os.environ["PIVOTLAB_CACHE"]) / kind
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pivotlab" / kind
