"""Names imported on first use: the right object, an AttributeError for unknown names, and
no model library loaded by importing the packages that use it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pivotlab.io
from pivotlab.lazy import lazy_exports


def test_names_resolve_to_their_homes_and_unknown_names_fail() -> None:
    getattr_, names = lazy_exports("pivotlab", {"io": ("read_jsonl", "file_sha256")})
    assert names == ["file_sha256", "read_jsonl"]
    assert getattr_("read_jsonl") is pivotlab.io.read_jsonl
    with pytest.raises(AttributeError, match="module 'pivotlab' has no attribute 'nothing'"):
        getattr_("nothing")


def test_the_lazy_packages_import_no_torch() -> None:
    script = (
        "import sys, pivotlab.model, pivotlab.evaluate, pivotlab.evaluate.config; "
        "print('torch' in sys.modules, len(pivotlab.model.__all__) > 5)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split() == ["False", "True"], done.stderr
