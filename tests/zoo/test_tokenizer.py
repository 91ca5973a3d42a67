"""The world tokenizer and the chat template."""

from __future__ import annotations

from pivotlab.zoo.tokenizer import IMAGE_TOKEN, world_tokenizer

MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "How many stars are there?"}],
    },
    {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
]


def test_chat_template_places_the_image_and_masks_only_the_answer() -> None:
    tokenizer = world_tokenizer()
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    user = "<|im_start|>user\n<image>\nHow many stars are there?<|im_end|>\n"
    assert text == user + "<|im_start|>assistant\n3<|im_end|>\n"
    encoded = tokenizer.apply_chat_template(
        MESSAGES, return_dict=True, return_assistant_tokens_mask=True
    )
    answer = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.convert_ids_to_tokens(answer) == ["3", "<|im_end|>"]
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)  # prefix preservation: prompt + answer = the conversation


def test_world_words_are_whole_tokens_and_nothing_is_unknown() -> None:
    tokenizer = world_tokenizer()
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) is not None
    for word in ("circle", "hexagon", "aquamarine", "guild"):
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    text = "Ünïcödé ✓ never seen"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
