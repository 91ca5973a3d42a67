"""A corpus of broken inputs, made by the tests: one row per problem kind, each row broken in
exactly one way, beside good rows, with the images they point at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> Path:
    """A small RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def llava(image: object, question: str = "<image>\nWhat colour is it?", answer: str = "red", **kw):
    """A LLaVA row with one human / gpt exchange."""
    row = {"id": kw.pop("id", "x"), "image": image}
    row["conversations"] = [
        {"from": "human", "value": question},
        {"from": "gpt", "value": answer},
    ]
    return row | kw


def mmpr(image: object, question="<image>\nWhat colour?", chosen="red", rejected="blue", **kw):
    """An MMPR row."""
    return {"id": kw.pop("id", "p"), "image": image, "question": question} | {
        "chosen": chosen,
        "rejected": rejected,
        **kw,
    }


def write_lines(path: Path, rows: list[object]) -> Path:
    """JSON lines; a ``bytes`` row is written as is (for lines that are not valid JSON)."""
    with path.open("wb") as out:
        for row in rows:
            out.write(row if isinstance(row, bytes) else json.dumps(row).encode())
            out.write(b"\n")
    return path


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """``images/`` with good images, a truncated PNG, a zero-byte file and a symlink that
    leaves the root; ``outside.png`` sits beside the root."""
    root = tmp_path / "images"
    for name, colour in (("a.png", (200, 0, 0)), ("b.png", (0, 200, 0)), ("c.png", (0, 0, 200))):
        png(root / name, colour)
    whole = png(tmp_path / "whole.png", size=64).read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "empty.png").write_bytes(b"")
    outside = png(tmp_path / "outside.png")
    (root / "link.png").symlink_to(outside)
    return root


# (expected kind, row) for the LLaVA format: each row breaks one rule.
BROKEN_LLAVA: list[tuple[str, object]] = [
    ("bad_json", b'{"id": "j", "image": "a.png", "conversations": [}'),
    ("bad_json", b'{"id": "u", "image": "a.png", "conversations": [], "x": "\xff\xfe"}'),
    ("bad_json", b'{"id": "n", "image": "a.png", "score": NaN, "conversations": []}'),
    ("wrong_type", ["not", "an", "object"]),
    ("missing_field", {"id": "m", "image": "a.png"}),
    ("wrong_type", llava(7)),
    ("bad_turns", {"id": "t", "image": "a.png", "conversations": [{"from": "gpt", "value": "x"}]}),
    ("no_image", {k: v for k, v in llava("a.png").items() if k != "image"}),
    ("multi_image", llava(["a.png", "b.png"], question="<image>\n<image>\nSame?")),
    ("placeholder_missing", llava("a.png", question="What colour is it?")),
    ("placeholder_extra", llava("a.png", question="<image>\n<image>\nWhat colour?")),
    ("empty_text", llava("a.png", answer="   ")),
    ("text_too_long", llava("a.png", answer="x" * 10_000)),
    ("path_escape", llava("../outside.png")),
    ("path_escape", llava("/etc/hostname")),
    ("path_escape", llava("link.png")),
    ("image_missing", llava("nowhere.png")),
    ("image_empty", llava("empty.png")),
    ("image_unreadable", llava("truncated.png")),
]

GOOD_LLAVA: list[dict] = [
    llava("a.png", id="good-a", category="colour"),
    llava("b.png", id="good-b", answer="green", category="colour"),
    {
        "id": "good-c",
        "image": "c.png",
        "source": "shapes",
        "conversations": [
            {"from": "human", "value": "What colour?\n<image>"},
            {"from": "gpt", "value": "blue"},
            {"from": "human", "value": "Is it dark?"},
            {"from": "gpt", "value": "no"},
        ],
    },
]


@pytest.fixture
def broken_llava(tmp_path: Path, image_root: Path) -> Path:
    """JSON lines: the good rows first, then one broken row per case of ``BROKEN_LLAVA``."""
    rows = GOOD_LLAVA + [row for _, row in BROKEN_LLAVA]
    return write_lines(tmp_path / "llava.jsonl", rows)
