"""Questions: answers match the ground truth, are balanced, and can't be read off the text."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from scipy.stats import chisquare

from pivotlab.io import read_jsonl
from pivotlab.world import NEGATIVE_TYPES, vocab
from pivotlab.world.answers import is_correct
from pivotlab.world.audit import text_only_baseline
from pivotlab.world.questions import COUNT_SPACE, GEM_SPACE, GUILD_SPACE, RELATIONS, SIDES_SPACE

PLURALS = {vocab.plural(s): s for s in vocab.SHAPES}
ANSWER_SPACES = {
    "exists": ("yes", "no"),
    "color": vocab.COLOR_NAMES,
    "shape": vocab.SHAPES,
    "size": vocab.SIZE_NAMES,
    "sides": SIDES_SPACE,
    "guild": GUILD_SPACE,
    "gem": GEM_SPACE,
    "glyph": vocab.GLYPHS,
    "text": vocab.WORDS,
    "tallest_bar": vocab.BAR_LABELS,
    "bar_value": tuple(str(v) for v in range(1, 10)),
    "count": COUNT_SPACE,
    "relation": RELATIONS,
    "relative_size": ("yes", "no"),
    "front": ("yes", "no"),
    "mmvp": ("yes", "no"),
}


@pytest.fixture(scope="module")
def train(audit_splits: tuple[Path, Path]) -> tuple[list[dict], dict[str, dict]]:
    root = audit_splits[0]
    scenes = {s["scene_id"]: s for s in read_jsonl(root / "scenes.jsonl")}
    return read_jsonl(root / "vqa.jsonl"), scenes


def _stem(question: str) -> str:
    return question.split("\n")[0]


def _matches(obj: dict, phrase: str) -> bool:
    words = phrase.split()
    noun = words[-1]
    return (noun == "object" or obj["shape"] == noun) and all(
        w in (obj["color"], obj["size"]) for w in words[:-1]
    )


def _expected_answer(record: dict, scene: dict) -> str:
    """The answer recomputed from scenes.jsonl, independently of the generator's code."""
    task, stem = record["task"], _stem(record["question"])
    objects = scene.get("objects", [])
    targets = [objects[i] for i in record["target_objects"]] if objects else []
    if task == "count":
        shape = PLURALS[re.match(r"How many (\w+) are there", stem).group(1)]
        return str(sum(o["shape"] == shape for o in objects))
    if task in ("color", "shape", "size"):
        return targets[0][task]
    if task == "glyph":
        return targets[0]["glyph"]
    if task == "sides":
        return str(vocab.SIDES[targets[0]["shape"]])
    if task == "guild":
        return vocab.GUILDS[targets[0]["shape"]]
    if task == "gem":
        return vocab.GEMS[targets[0]["color"]]
    if task == "exists":
        phrase = re.match(r"Is there an? (.+) in the image\?", stem).group(1)
        return "yes" if any(_matches(o, phrase) for o in objects) else "no"
    if task == "relation":
        (ax, ay), (bx, by) = targets[0]["center"], targets[1]["center"]
        if abs(ax - bx) > abs(ay - by):
            return "left" if ax < bx else "right"
        return "above" if ay < by else "below"
    if task == "relative_size":
        order = vocab.SIZE_NAMES
        return "yes" if order.index(targets[0]["size"]) > order.index(targets[1]["size"]) else "no"
    if task == "front":
        return "yes" if targets[0]["z"] > targets[1]["z"] else "no"
    if task == "tallest_bar":
        return max(scene["chart"]["bars"], key=lambda b: b["value"])["label"]
    if task == "bar_value":
        label = re.match(r"What is the value of bar (\w)", stem).group(1)
        return str(next(b["value"] for b in scene["chart"]["bars"] if b["label"] == label))
    if task == "text":
        return scene["text"]["content"]
    raise KeyError(task)


def test_answers_match_the_ground_truth(train: tuple[list[dict], dict[str, dict]]) -> None:
    records, scenes = train
    checked = Counter()
    for record in records:
        if record["task"] in ("caption", "mmvp"):
            continue
        expected = _expected_answer(record, scenes[record["scene_id"]])
        assert record["answer_text"] == expected, record
        checked[record["task"]] += 1
    assert set(checked) == set(ANSWER_SPACES) - {"mmvp"}


def test_questions_never_name_what_they_ask(train: tuple[list[dict], dict[str, dict]]) -> None:
    forbidden = {
        "color": vocab.COLOR_NAMES,
        "gem": vocab.COLOR_NAMES,
        "shape": vocab.SHAPES,
        "sides": vocab.SHAPES,
        "guild": vocab.SHAPES,
        "size": vocab.SIZE_NAMES,
        "relative_size": vocab.SIZE_NAMES,
    }
    for record in train[0]:
        phrase = _stem(record["question"]).replace(" small, medium or large?", "")
        words = set(re.findall(r"\w+", phrase))
        assert not words & set(forbidden.get(record["task"], ())), record["question"]


def test_multiple_choice_options_are_consistent(train: tuple[list[dict], dict[str, dict]]) -> None:
    formats = Counter()
    for record in train[0]:
        formats[record["format"]] += 1
        if record["format"] == "open":
            assert record["choices"] is None and record["answer"] == record["answer_text"]
            continue
        choices = record["choices"]
        assert 2 <= len(choices) <= 4 and len(set(choices)) == len(choices)
        assert choices[" ABCD".index(record["answer"]) - 1] == record["answer_text"]
        assert record["chance"] == pytest.approx(1 / len(choices), abs=1e-6)
        for letter, option in zip("ABCD", choices, strict=False):
            assert f"\n{letter}. {option}" in record["question"]
    assert 0.4 < formats["mc"] / sum(formats.values()) < 0.6


def test_answers_are_balanced_within_every_task(train: tuple[list[dict], dict[str, dict]]) -> None:
    by_task: dict[str, Counter] = defaultdict(Counter)
    for record in train[0]:
        by_task[record["task"]][record["answer_text"]] += 1
    for task, space in ANSWER_SPACES.items():
        counts = by_task[task]
        assert set(counts) <= set(space), task
        observed = [counts[a] for a in space]
        assert sum(observed) >= 10 * len(space), (task, sum(observed))
        assert chisquare(observed).pvalue > 1e-3, (task, dict(counts))


def test_mmvp_pairs_share_the_question_and_differ_in_the_answer(
    train: tuple[list[dict], dict[str, dict]],
) -> None:
    pairs: dict[str, list[dict]] = defaultdict(list)
    for record in train[0]:
        if record["pair_id"]:
            pairs[record["pair_id"]].append(record)
    assert len(pairs) > 50
    for members in pairs.values():
        assert len(members) == 2
        a, b = members
        assert a["scene_id"] != b["scene_id"] and a["task"] == b["task"] == "mmvp"
        assert a["question"] == b["question"] and a["choices"] == b["choices"]
        assert a["answer_text"] != b["answer_text"]


def test_text_only_baseline_sits_at_chance(audit_splits: tuple[Path, Path]) -> None:
    train_dir, test_dir = audit_splits
    scores = text_only_baseline(
        read_jsonl(train_dir / "vqa.jsonl"), read_jsonl(test_dir / "vqa.jsonl")
    )
    for category in ("vision_centric", "ocr_chart"):
        score = scores[f"category:{category}"]
        assert score.n > 1000
        assert abs(score.above_chance) <= 0.03, score
    for category in ("general", "knowledge"):
        assert abs(scores[f"category:{category}"].above_chance) <= 0.05


def test_text_only_baseline_catches_a_leak(audit_splits: tuple[Path, Path]) -> None:
    """The audit has teeth: questions that give the answer away score far above chance."""
    train_dir, test_dir = audit_splits

    def leaky(records: list[dict]) -> list[dict]:
        return [
            dict(r, question=f"{r['question']} (psst: {r['answer']})")
            for r in records
            if r["category"] == "vision_centric"
        ]

    train = leaky(read_jsonl(train_dir / "vqa.jsonl"))
    test = leaky(read_jsonl(test_dir / "vqa.jsonl"))
    assert text_only_baseline(train, test)["category:vision_centric"].above_chance > 0.3


def test_preferences_pair_a_correct_answer_with_a_wrong_one(
    audit_splits: tuple[Path, Path],
) -> None:
    root = audit_splits[0]
    vqa = {r["id"]: r for r in read_jsonl(root / "vqa.jsonl")}
    preferences = read_jsonl(root / "preferences.jsonl")
    types = Counter()
    for pair in preferences:
        record = vqa[pair["vqa_id"]]
        assert pair["prompt"] == record["question"]
        assert pair["negative_type"] in NEGATIVE_TYPES
        types[pair["negative_type"]] += 1
        if record["task"] == "caption" and record["format"] == "open":
            assert pair["chosen"] == record["answer"] != pair["rejected"]
            continue
        assert is_correct(record, pair["chosen"]), pair
        assert not is_correct(record, pair["rejected"]), pair
    for required in (
        "hallucinated_object",
        "distractor_attribute",
        "count_off_by_one",
        "flipped_relation",
        "confusable_glyph",
    ):
        assert types[required] > 20, (required, types)
    with_rationale = [
        p for p in preferences if len(p["chosen"].split()) > 3 and p["task"] != "caption"
    ]
    assert 0.3 < len(with_rationale) / len(preferences) < 0.6
