"""A real tokenizer for the tiny presets, trained on the world's text, and the chat template.

Tiny language models need a tokenizer that behaves like a hub one: special tokens, a chat
template with an image placeholder, ``save_pretrained`` / ``from_pretrained`` offline. A
byte-level BPE (the ``tokenizers`` library, as GPT-2 and Qwen use) trained on the world's
questions, answers, captions and lore gives that with a vocabulary of about a thousand,
and never produces an unknown token.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<|pad|>"
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Words of symbolic scenes (``pivotlab.world.symbolic``) that the world's text never says:
# a cell holding an object, an empty cell, and an object's occlusion.
CELL_TOKENS: tuple[str, ...] = ("<obj>", "<bg>", "<hidden>", "<front>")
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    END_OF_TEXT,
    IM_START,
    IM_END,
    IMAGE_TOKEN,
    *CELL_TOKENS,
)

# ChatML (Qwen's format). Content may be a string or a list of {"type": "image"|"text"}
# items, as TRL's conversational datasets write it; each image becomes one <image>
# placeholder, which the Llava processor expands to the number of visual tokens. Assistant
# turns sit in {% generation %} blocks, so trainers can mask the loss to the answers
# (TRL's assistant_only_loss).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_world_tokenizer(lines: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``lines``, with pivotlab's special tokens and chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[END_OF_TEXT, IM_START, IMAGE_TOKEN, *CELL_TOKENS],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="left",
    )


@lru_cache(maxsize=2)
def world_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The tiny presets' tokenizer (deterministic: same world text, same merges)."""
    from pivotlab.world.corpus import world_text

    return train_world_tokenizer(world_text(), vocab_size)
