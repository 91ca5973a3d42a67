"""A contact sheet of a generated split: image, semantic mask and instance mask per scene.

pivotlab world show runs/world/train --out sheet.png --n 12
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pivotlab.errors import PivotlabError
from pivotlab.images import open_image
from pivotlab.io import read_jsonl
from pivotlab.world import vocab

# A fixed, well-separated colour per semantic class and per instance id.
_PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
    ],
    np.uint8,
)


def _colourise(mask: np.ndarray) -> np.ndarray:
    return _PALETTE[mask % len(_PALETTE)]


def _scenes(path: Path, n: int) -> list[tuple[dict, str]]:
    """The first ``n`` scene records with where each was read (``file:line``); one line
    naming the file and field when a record lacks what a sheet needs."""
    scenes = [(scene, f"{path}:{line}") for line, scene in enumerate(read_jsonl(path)[:n], 1)]
    if not scenes:
        raise PivotlabError(f"{path}: no scenes")
    for scene, where in scenes:
        for field, kind in (("scene_id", (str, int)), ("size", int)):
            if not isinstance(scene.get(field), kind):
                raise PivotlabError(f"{where}: field {field!r} missing or of the wrong type")
    return scenes


def contact_sheet(split_dir: Path | str, n: int = 12, scale: int = 3) -> Image.Image:
    """The first ``n`` scenes of a split, each as image | semantic | instances, with one
    question and answer under it."""
    split_dir = Path(split_dir)
    scenes = _scenes(split_dir / "scenes.jsonl", n)
    questions: dict[str, str] = {}
    vqa = split_dir / "vqa.jsonl"
    for record in read_jsonl(vqa) if vqa.is_file() else []:
        if record.get("format") == "open" and record.get("scene_id") not in questions:
            questions[record["scene_id"]] = f"{record.get('question')} -> {record.get('answer')}"
    size = scenes[0][0]["size"] * scale
    row_height = size + 14
    sheet = Image.new("RGB", (3 * size + 8, row_height * len(scenes)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (scene, where) in enumerate(scenes):
        sid = scene["scene_id"]
        panels = [
            np.asarray(open_image(split_dir, f"images/{sid}.png", where)),
            _colourise(np.asarray(open_image(split_dir, f"masks/{sid}.png", where, mode=None))),
            _colourise(np.asarray(open_image(split_dir, f"instances/{sid}.png", where, mode=None))),
        ]
        for column, panel in enumerate(panels):
            tile = Image.fromarray(panel).resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(tile, (column * (size + 4), row * row_height))
        draw.text((2, row * row_height + size + 1), questions.get(sid, sid)[:90], fill=(0, 0, 0))
    return sheet


def legend() -> str:
    """Which palette colour each semantic class gets, for reading a sheet."""
    return ", ".join(f"{i}={name}" for i, name in enumerate(vocab.SEMANTIC_CLASSES))
