"""A tiny MLLM trained briefly on world answers (so it replies in the answer formats) and a
small test split, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers.utils import logging as hf_logging

from pivotlab.io import read_jsonl
from pivotlab.model import assemble, save
from pivotlab.world import WorldConfig, generate

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


def _conversation(processor, record: dict, with_answer: bool) -> str:
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": record["question"]}],
        }
    ]
    if with_answer:
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]}
        )
    return processor.apply_chat_template(messages, add_generation_prompt=not with_answer)


def briefly_trained(split: Path, steps: int = 80, seed: int = 0):
    """tiny-siglip + tiny-qwen2 after a few answer-only SFT steps (test scaffolding, not the
    train layer): enough to reply with letters, yes/no and short words."""
    torch.manual_seed(seed)
    model, processor = assemble("tiny-siglip", "tiny-qwen2", image_size=32, seed=seed)
    processor.tokenizer.padding_side = "right"
    records = read_jsonl(split / "vqa.jsonl")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = [records[i] for i in torch.randint(len(records), (16,), generator=order).tolist()]
        images = [Image.open(split / r["image"]).convert("RGB") for r in batch]
        full = processor(
            images=images,
            text=[_conversation(processor, r, True) for r in batch],
            return_tensors="pt",
            padding=True,
        )
        prompts = processor(
            images=images,
            text=[_conversation(processor, r, False) for r in batch],
            return_tensors="pt",
            padding=True,
        )
        labels = full["input_ids"].clone()
        positions = torch.arange(labels.shape[1])[None, :]
        labels[positions < prompts["attention_mask"].sum(dim=1, keepdim=True)] = -100
        labels[full["attention_mask"] == 0] = -100
        model(**full, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    processor.tokenizer.padding_side = "left"
    return model, processor


@pytest.fixture(scope="session")
def eval_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "test"
    generate(WorldConfig(split="test", n=40, seed=5, size=32, probe_n=0), out)
    return out


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, eval_split: Path) -> Path:
    train = tmp_path_factory.mktemp("eval") / "train"
    generate(WorldConfig(split="train", n=60, seed=5, size=32, probe_n=0), train)
    model, processor = briefly_trained(train)
    out = tmp_path_factory.mktemp("eval") / "model"
    save(model, processor, out)
    return out
