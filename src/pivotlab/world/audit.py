"""Is a VQA split answerable without the image? A text-only baseline per category.

A classifier that sees only the question text (options included) is trained on one split
and scored on another; on a well-built benchmark it sits at chance. Each record's chance
is its own (``1 / len(choices)`` for multiple choice, ``1 / |answer space|`` for open
answers), averaged per category. Open captions (chance 0, every answer unique) are left
out. One TF-IDF + logistic-regression model per task.

    pivotlab world audit --train runs/world/train --test runs/world/test
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True)
class BaselineScore:
    """Text-only accuracy and chance over one group of test questions."""

    group: str
    n: int
    accuracy: float
    chance: float

    @property
    def above_chance(self) -> float:
        return self.accuracy - self.chance


def _scorable(record: dict) -> bool:
    return record["chance"] > 0


def _predict_task(train: list[dict], test: list[dict]) -> list[str]:
    answers = {r["answer"] for r in train}
    if len(answers) == 1:
        return [next(iter(answers))] * len(test)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"[^\s]+")
    features = vectorizer.fit_transform([r["question"] for r in train])
    model = LogisticRegression(C=10.0, max_iter=500)
    model.fit(features, [r["answer"] for r in train])
    return model.predict(vectorizer.transform([r["question"] for r in test])).tolist()


def text_only_baseline(train: list[dict], test: list[dict]) -> dict[str, BaselineScore]:
    """Scores by category and by task (keys ``"category:<name>"`` and ``"task:<name>"``)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    chances: dict[str, list[float]] = defaultdict(list)
    tasks = sorted({r["task"] for r in test if _scorable(r)})
    for task in tasks:
        task_train = [r for r in train if r["task"] == task and _scorable(r)]
        task_test = [r for r in test if r["task"] == task and _scorable(r)]
        if not task_train:
            continue
        for record, predicted in zip(task_test, _predict_task(task_train, task_test), strict=True):
            for group in (f"category:{record['category']}", f"task:{task}"):
                hits[group].append(predicted == record["answer"])
                chances[group].append(record["chance"])
    return {
        group: BaselineScore(
            group,
            len(hits[group]),
            sum(hits[group]) / len(hits[group]),
            sum(chances[group]) / len(chances[group]),
        )
        for group in sorted(hits)
    }
