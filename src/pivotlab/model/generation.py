"""Replies of an MLLM to (image, question) prompts in its own chat template.

Shared by evaluation (greedy) and on-policy preference data (sampling): batched,
left-padded, with the KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


def chat_prompt(processor, question: str) -> str:
    """The user turn with one image and ``question``, ready for the assistant's reply."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.inference_mode()
def generate_replies(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float | None = None,
    samples: int = 1,
) -> list[list[str]]:
    """``samples`` replies per prompt: greedy when ``temperature`` is None, else sampled
    at that temperature (seed torch beforehand for repeatable samples)."""
    processor.tokenizer.padding_side = "left"
    sampling = {"do_sample": False}
    if temperature is not None:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    replies: list[list[str]] = []
    for start in range(0, len(questions), batch_size):
        batch_questions = questions[start : start + batch_size]
        inputs = processor(
            images=list(images[start : start + batch_size]),
            text=[chat_prompt(processor, q) for q in batch_questions],
            return_tensors="pt",
            padding=True,
        ).to(model.device)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            use_cache=True,
            **sampling,
        )
        texts = processor.batch_decode(
            output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        texts = [t.strip() for t in texts]
        replies += [texts[i : i + samples] for i in range(0, len(texts), samples)]
    return replies
