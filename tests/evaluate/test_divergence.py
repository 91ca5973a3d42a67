"""KL of a model's answers from a reference's: zero against itself, the answer's own tokens,
padding-independent, the same as a direct sum over the vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pivotlab.evaluate.divergence import (
    KL_METRIC,
    answer_kl,
    answer_spans,
    answered_prompt,
    measure_kl,
)
from pivotlab.evaluate.runner import load_items
from pivotlab.images import open_image
from pivotlab.io import read_jsonl
from pivotlab.model import assemble, load, save
from pivotlab.model.generation import chat_prompt


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = assemble("tiny-siglip", "tiny-qwen2", image_size=32, seed=1)
    out = tmp_path_factory.mktemp("kl") / "untrained"
    save(model, processor, out)
    return out


def test_a_model_is_at_zero_from_itself(trained_model_dir: Path, eval_split: Path) -> None:
    model, processor = load(trained_model_dir)
    items = load_items(eval_split, limit=12)
    values = answer_kl(model, model, processor, eval_split, items, batch_size=5)
    assert len(values) == 12
    assert max(abs(v) for v in values) < 1e-6


def test_spans_hold_the_answer_and_values_do_not_depend_on_padding(
    trained_model_dir: Path, untrained_dir: Path, eval_split: Path
) -> None:
    model, processor = load(trained_model_dir)
    reference, _ = load(untrained_dir)
    items = load_items(eval_split, limit=6)
    batched = answer_kl(model, reference, processor, eval_split, items, batch_size=6)
    alone = [answer_kl(model, reference, processor, eval_split, [r])[0] for r in items]
    assert batched == pytest.approx(alone, rel=1e-4, abs=1e-6)
    assert min(batched) > 0

    # The scored positions predict exactly the answer's tokens (and the turn's end).
    record = items[0]
    text = answered_prompt(processor, record["question"], str(record["answer"]))
    image = open_image(eval_split, record["image"], "test")
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    prompt = chat_prompt(processor, record["question"])
    (span,) = answer_spans(processor, inputs, [prompt], model.config.image_token_id)
    targets = inputs["input_ids"][0, span.start + 1 : span.stop + 1]
    decoded = processor.tokenizer.decode(targets)
    assert decoded.startswith(str(record["answer"]))

    # The same number as the divergence summed over the vocabulary by hand.
    with torch.inference_mode():
        p = model(**inputs).logits[0, span.start : span.stop].softmax(-1)
        q = reference(**inputs).logits[0, span.start : span.stop].softmax(-1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean().item()
    assert batched[0] == pytest.approx(by_hand, rel=1e-4)


def test_measure_kl_writes_rows_per_question_and_category(
    trained_model_dir: Path, untrained_dir: Path, eval_split: Path, tmp_path: Path
) -> None:
    summary = measure_kl(trained_model_dir, untrained_dir, eval_split, tmp_path / "kl", limit=10)
    per_item = read_jsonl(tmp_path / "kl/kl.jsonl")
    rows = read_jsonl(tmp_path / "kl/metrics.jsonl")
    assert len(per_item) == 10 and summary["n"] == 10
    assert summary["value"] == pytest.approx(sum(r["kl"] for r in per_item) / 10)
    assert all(r["metric"] == KL_METRIC and r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows)
    by_category = [r for r in rows if "category" in r]
    assert sum(r["n"] for r in by_category) == 10
