"""Token lengths with the model's own processor, and the ``max_length`` check.

The processor expands the one ``<image>`` token of a prompt into N image tokens (N from the
vision tower's patch grid). Trainers cut sequences at ``max_length`` after that expansion;
a cut inside the image tokens leaves fewer image tokens than image features, and the model
fails with "Image features and image tokens do not match" (TRL re-raises it with "increase
max_length"). A cut after the image silently trains on a truncated answer. Both are caught
here before training, per record.

N is measured once by running the processor on a blank image; each record's text is then
tokenized alone, which is what the processor does to the text around the image (a test
checks the count against the processor's full output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pivotlab.data.records import DataError, Record
from pivotlab.errors import one_line
from pivotlab.world.hf import conversation

TEMPLATES: tuple[str, ...] = ("chat", "plain")


def load_processor(path: Path | str):
    """A saved model's processor (``AutoProcessor``); one-line ``DataError`` otherwise."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot load a processor ({one_line(error)})") from None
    if getattr(processor, "image_token", None) is None:
        raise DataError(f"{path}: its processor has no image token (not a multimodal model)")
    return processor


@dataclass(frozen=True)
class Length:
    """Where the image tokens end and how many tokens the longest sequence has."""

    image_end: int
    total: int


class TokenCounter:
    """Token lengths of records as a model will see them: ``chat`` renders the
    conversation with the processor's chat template; ``plain`` is the align stage's
    ``<image>`` + caption + end-of-sequence."""

    def __init__(self, processor, template: str = "chat") -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        self.processor = processor
        self.template = template
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.image_tokens = self._image_tokens()

    def _image_tokens(self) -> int:
        expanded = self.processor(images=[Image.new("RGB", (64, 64))], text=[self.image_token])
        return list(expanded["input_ids"][0]).count(self.image_token_id)

    def _texts(self, record: Record) -> list[str]:
        """Every sequence the record trains on (both answers of a preference pair)."""
        if self.template == "plain":
            return [self.image_token + record.chosen + self.tokenizer.eos_token]
        answers = [record.chosen] + ([record.rejected] if record.rejected is not None else [])
        texts = []
        for answer in answers:
            turns = ((record.prompt, answer), *record.turns[1:])
            texts.append(self.processor.apply_chat_template(conversation(turns), tokenize=False))
        return texts

    def lengths(self, records: list[Record]) -> list[Length]:
        """Per record: where the image tokens end and its longest sequence's length, in
        tokens (the texts of all records tokenized in one batch)."""
        texts = [self._texts(r) for r in records]
        flat = [t for group in texts for t in group]
        ids = self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        measured, start = [], 0
        for group in texts:
            longest = Length(0, 0)
            for tokens in ids[start : start + len(group)]:
                image_end = tokens.index(self.image_token_id) + self.image_tokens
                total = len(tokens) - 1 + self.image_tokens
                longest = Length(max(longest.image_end, image_end), max(longest.total, total))
            measured.append(longest)
            start += len(group)
        return measured

    def length(self, record: Record) -> Length:
        """``lengths`` of one record."""
        return self.lengths([record])[0]


def length_finding(length: Length, max_length: int) -> tuple[str, str] | None:
    """The problem a record of ``length`` has under ``max_length``, or None."""
    if length.image_end > max_length:
        return (
            "image_tokens_cut",
            f"the image tokens end at token {length.image_end}, past max_length {max_length} "
            "(image features and image tokens would not match)",
        )
    if length.total > max_length:
        return (
            "over_max_length",
            f"{length.total} tokens, over max_length {max_length}: the answer would be cut",
        )
    return None
