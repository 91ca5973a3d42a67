"""Tiny MLLMs built once per test session (32 px images, 2-block towers)."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 90, 210))]


def chat(processor, images: list[Image.Image], question: str = "How many stars are there?"):
    """Batched model inputs for one question per image, with the generation prompt."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
