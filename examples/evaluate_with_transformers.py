"""Evaluate a saved pivotlab checkpoint with plain transformers: no pivotlab import.

    python examples/evaluate_with_transformers.py --model runs/models/tiny --data runs/world/test

A pivotlab model folder is an ordinary `LlavaForConditionalGeneration` with its processor
and chat template, so this is all it takes. Scoring here is the simplest rule (the reply's
first word equals the answer, case-insensitively); `pivotlab evaluate` applies the full
rules (multiple-choice letter extraction, number words, relaxed numbers, pair accuracy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="a folder with vqa.jsonl and images"
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    lines = (args.data / "vqa.jsonl").read_text().splitlines()[: args.limit]
    correct = 0
    for line in lines:
        record = json.loads(line)
        messages = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": record["question"]}]}]  # fmt: skip
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        image = Image.open(args.data / record["image"]).convert("RGB")
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        reply = processor.decode(
            output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        reply = reply.strip()
        words = reply.replace(".", " ").split()
        correct += bool(words) and words[0].lower() == record["answer"].lower()
        print(json.dumps({"id": record["id"], "prediction": reply}))
    print(f"accuracy {correct / len(lines):.3f} on {len(lines)} questions")


if __name__ == "__main__":
    main()
