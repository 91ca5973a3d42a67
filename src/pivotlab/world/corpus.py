"""The world's language as plain text: what tokenizers and text-only LMs are trained on."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pivotlab.io import read_jsonl
from pivotlab.world import vocab
from pivotlab.world.generate import WorldConfig, generate


def vocabulary_lines() -> list[str]:
    """Every word the world can draw or say, so no answer is ever out of vocabulary."""
    return [
        " ".join(vocab.SHAPES),
        " ".join(vocab.plural(s) for s in vocab.SHAPES),
        " ".join(vocab.COLOR_NAMES),
        " ".join(vocab.SIZE_NAMES),
        " ".join(vocab.GLYPHS),
        " ".join(vocab.WORDS),
        " ".join(vocab.BAR_LABELS),
        " ".join(vocab.GEMS.values()),
        " ".join(sorted(set(vocab.GUILDS.values()))),
        " ".join(vocab.BACKGROUNDS.values()),
        " ".join(str(v) for v in range(100)),
        "user assistant system",
    ]


def world_records(
    split: str = "train", n_scenes: int = 400, seed: int = 0, size: int = 64
) -> tuple[list[dict], list[dict], list[str]]:
    """VQA records, preference records and captions of a freshly generated (then
    discarded) split."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "corpus"
        generate(WorldConfig(split=split, n=n_scenes, seed=seed, size=size, probe_n=0), out)
        captions = [r["caption"] for r in read_jsonl(out / "probes/captions.jsonl")]
        return read_jsonl(out / "vqa.jsonl"), read_jsonl(out / "preferences.jsonl"), captions


def world_text(n_scenes: int = 400, seed: int = 0, size: int = 64) -> list[str]:
    """Questions, answers, preference responses, captions, lore and the vocabulary."""
    vqa, preferences, captions = world_records("train", n_scenes, seed, size)
    lines = [text for r in vqa for text in (r["question"], r["answer"])]
    lines += [text for r in preferences for text in (r["chosen"], r["rejected"])]
    return lines + captions + vocab.lore_sentences() + vocabulary_lines()
