"""On-policy negatives: wrong answers a model actually gives, verified against ground truth.

The training issues plug a sampler in (a Stage-1 MLLM generating answers for a question);
this module keeps only what the world's ground truth proves wrong and turns it into
preference records in the same format as ``preferences.jsonl`` (``negative_type``
``"on_policy"``), so synthetic and on-policy pairs mix freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pivotlab.world.answers import is_correct

Sampler = Callable[[dict], Sequence[str]]


def on_policy_preferences(
    vqa_records: Iterable[dict], sample: Sampler, max_per_question: int = 1
) -> list[dict]:
    """Preference records whose ``rejected`` is a sampled reply that is wrong.

    ``sample(record)`` returns candidate replies for one VQA record. Correct, empty and
    duplicate replies are dropped; questions where every reply was right yield nothing.
    """
    if max_per_question < 1:
        raise ValueError(f"max_per_question must be at least 1, got {max_per_question}")
    pairs = []
    for record in vqa_records:
        seen: set[str] = set()
        kept = 0
        for reply in sample(record):
            text = reply.strip()
            if not text or text in seen or is_correct(record, text):
                continue
            seen.add(text)
            pairs.append(
                {
                    "id": f"{record['id']}-onpolicy{kept:02d}",
                    "vqa_id": record["id"],
                    "scene_id": record["scene_id"],
                    "image": record["image"],
                    "category": record["category"],
                    "task": record["task"],
                    "prompt": record["question"],
                    "chosen": record["answer"],
                    "rejected": text,
                    "negative_type": "on_policy",
                }
            )
            kept += 1
            if kept == max_per_question:
                break
    return pairs
