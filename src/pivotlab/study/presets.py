"""Where study presets are found: ``configs/study/NAME.yaml`` under the working folder or
the checkout this package runs from. Kept apart from ``config.py`` so that listing them
(``pivotlab study --help``) imports no model library."""

from __future__ import annotations

from pathlib import Path

PRESETS_DIR = "configs/study"


def _repository_root() -> Path | None:
    """The checkout this package runs from (editable installs), where ``configs/`` lives."""
    for parent in Path(__file__).resolve().parents:
        if (parent / PRESETS_DIR).is_dir():
            return parent
    return None


def preset_roots() -> list[Path]:
    """``configs/study`` under the working folder, and under the checkout when there is one."""
    return [root / PRESETS_DIR for root in (Path.cwd(), _repository_root()) if root is not None]


def known_presets() -> list[str]:
    """The study presets found (``configs/study/*.yaml`` here and in the checkout)."""
    return sorted({p.stem for root in preset_roots() for p in root.glob("*.yaml")})
