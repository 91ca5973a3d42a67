"""Verifiable rewards for GRPO, computed from the world's ground truth.

Each function has the signature TRL's ``GRPOTrainer`` calls a reward function with:
``prompts``, ``completions`` (conversational: ``[{"role": "assistant", "content": ...}]``),
``completion_ids``, and every dataset column as a keyword, one value per completion. The
columns read here are ``truth`` (``GROUND_TRUTH``: the question's scoring fields as JSON,
``ground_truth``) and nothing else, so the rewards work on any row that carries it.

- ``correctness``: 1.0 when ``pivotlab.world.answers.score_reply`` (the scorer
  ``pivotlab evaluate`` uses) marks the reply right, else 0.0: training rewards exactly
  what evaluation counts.
- ``mc_format``: for a multiple-choice question, 1.0 when ``extract_choice`` (evaluation's
  reading of a reply) finds one valid option in the reply, else 0.0; ``None`` for an open
  question, which TRL leaves out of that reward's mean and of the sum.
- ``length``: minus the reply's share of the token budget, ``-len(ids) / max_tokens``; its
  weight in TRL's ``reward_weights`` is ``post.grpo.length_penalty``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from pivotlab.world.answers import extract_choice, score_reply

GROUND_TRUTH = "truth"  # the dataset column the rewards read
# What score_reply reads from a VQA record; a ground truth keeps only these.
SCORED_FIELDS = ("answer", "answer_text", "choices", "task", "scoring")


def ground_truth(record: dict) -> str:
    """A VQA record's scoring fields as the JSON string stored in the ``truth`` column."""
    return json.dumps({k: record[k] for k in SCORED_FIELDS if record.get(k) is not None})


def reply_text(completion: str | list[dict]) -> str:
    """The text of a completion, stripped as ``pivotlab evaluate`` strips replies."""
    if isinstance(completion, str):
        return completion.strip()
    content = completion[-1]["content"]
    if isinstance(content, list):  # content blocks
        content = "".join(block.get("text") or "" for block in content)
    return content.strip()


@functools.lru_cache(maxsize=4096)
def _parsed(truth: str) -> dict:
    # Every prompt's truth arrives once per completion: parse it once.
    return json.loads(truth)


def correctness(completions: list, truth: list[str], **_: object) -> list[float]:
    """1.0 for a reply the evaluation's scorer marks correct, else 0.0."""
    return [
        float(score_reply(_parsed(t), reply_text(c)).correct)
        for c, t in zip(completions, truth, strict=True)
    ]


def mc_format(completions: list, truth: list[str], **_: object) -> list[float | None]:
    """For multiple-choice questions, 1.0 when the reply picks exactly one valid option as
    ``extract_choice`` reads it, else 0.0; ``None`` (not applicable) for open questions."""
    rewards: list[float | None] = []
    for completion, raw in zip(completions, truth, strict=True):
        choices = _parsed(raw).get("choices")
        if not choices:
            rewards.append(None)
            continue
        rewards.append(float(extract_choice(reply_text(completion), choices) is not None))
    return rewards


def length(completion_ids: list[list[int]], max_tokens: int, **_: object) -> list[float]:
    """Minus each reply's length as a share of ``max_tokens`` (0 to -1); weighted by
    ``post.grpo.length_penalty``."""
    return [-len(ids) / max_tokens for ids in completion_ids]


def reward_functions(
    max_completion_length: int, format_weight: float, length_penalty: float
) -> tuple[list[Callable], list[float]]:
    """The reward functions and their weights (TRL's ``reward_funcs``, ``reward_weights``);
    the length term only when it has a weight, so no zero column is logged."""
    functions: list[Callable] = [correctness, mc_format]
    weights = [1.0, format_weight]
    if length_penalty > 0:
        functions.append(functools.partial(length, max_tokens=max_completion_length))
        weights.append(length_penalty)
    return functions, weights
