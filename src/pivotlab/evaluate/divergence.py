"""How far a post-trained MLLM moved from the model it started from, in its answers.

The measure is the KL divergence KL(model || reference) of the next-token distributions
over the reference answer's tokens (the chat template's assistant turn, end of turn
included), teacher-forced on held-out questions, averaged over each answer's tokens:
the quantity DPO's objective bounds (the policy against its frozen reference), and the
one RL's Razor (Shenfeld et al. 2025) finds predicts forgetting. Computed over the whole
vocabulary, so it sees every shift of probability, not only the argmax. Both models must
share the processor (a post arm and the Stage-1 model it started from do).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from pivotlab.evaluate.metrics import bootstrap_interval
from pivotlab.evaluate.runner import load_items
from pivotlab.images import open_image
from pivotlab.io import write_jsonl_atomic
from pivotlab.model import load
from pivotlab.model.generation import chat_prompt

KL_METRIC = "answer_kl"


def answered_prompt(processor, question: str, answer: str) -> str:
    """The user turn with one image and ``question``, then the assistant's ``answer``."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return processor.apply_chat_template(messages)


def answer_spans(processor, inputs, prompts: list[str], image_token_id: int) -> list[range]:
    """Per row, the positions whose logits predict the answer's tokens."""
    tokenizer = processor.tokenizer
    image_tokens = (inputs["input_ids"] == image_token_id).sum(dim=1)
    spans = []
    for row, prompt in enumerate(prompts):
        prompt_length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        # Placeholder expansion adds (visual tokens - 1) ids before the answer.
        first_answer = prompt_length + int(image_tokens[row]) - 1
        end = int(inputs["attention_mask"][row].sum())
        spans.append(range(first_answer - 1, end - 1))
    return spans


@torch.inference_mode()
def answer_kl(model, reference, processor, data: Path, items: list[dict], batch_size: int = 16):
    """KL(model || reference) per answer token, averaged over each item's answer, one value
    per item of ``items`` (VQA records of ``data``)."""
    processor.tokenizer.padding_side = "right"  # real tokens keep their position ids
    values: list[float] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prompts = [chat_prompt(processor, record["question"]) for record in batch]
        texts = [answered_prompt(processor, r["question"], str(r["answer"])) for r in batch]
        where = f"{data / 'vqa.jsonl'}"
        images = [open_image(data, r["image"], f"{where} (question {r['id']})") for r in batch]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        logits, reference_logits = model(**inputs).logits, reference(**inputs).logits
        spans = answer_spans(processor, inputs, prompts, model.config.image_token_id)
        for row, span in enumerate(spans):
            positions = torch.tensor(list(span))
            log_p = logits[row, positions].float().log_softmax(dim=-1)
            log_q = reference_logits[row, positions].float().log_softmax(dim=-1)
            per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
            values.append(float(per_token.mean()))
    return values


def kl_rows(items: list[dict], values: list[float], base: dict) -> list[dict]:
    """Metric rows: the mean KL per category and over every item, with bootstrap 95%
    intervals over the items."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for record, value in zip(items, values, strict=True):
        by_category[record["category"]].append(value)
    groups = [(category, by_category[category]) for category in sorted(by_category)]
    rows = []
    for category, group in [*groups, (None, values)]:
        low, high = bootstrap_interval(group)
        row = {**base, "metric": KL_METRIC, "value": float(np.mean(group))}
        if category is not None:
            row["category"] = category
        rows.append({**row, "ci_low": low, "ci_high": high, "n": len(group)})
    return rows


def measure_kl(
    model_dir: Path,
    reference_dir: Path,
    data: Path,
    out: Path,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """KL of ``model_dir``'s answers from ``reference_dir``'s on the split ``data``: writes
    ``out/kl.jsonl`` (one row per question) and ``out/metrics.jsonl``; returns the row over
    every question (``value``, ``ci_low``, ``ci_high``, ``n``)."""
    items = load_items(data, limit=limit)
    model, processor = load(model_dir)
    reference, _ = load(reference_dir)
    model.eval()
    reference.eval()
    values = answer_kl(model, reference, processor, data, items, batch_size)
    base = {"run": out.name, "stage": "evaluate", "seed": seed, "split": data.name}
    rows = kl_rows(items, values, {**base, "reference": str(reference_dir)})
    per_item = [
        {"id": r["id"], "category": r["category"], "task": r["task"], "kl": value}
        for r, value in zip(items, values, strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "kl.jsonl", per_item)
    write_jsonl_atomic(out / "metrics.jsonl", rows)
    return rows[-1]
