"""The LM head on the labelled positions only gives TRL's fused head's numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trl.trainer.utils import add_fused_lm_head

from pivotlab.model import load
from pivotlab.train import lmhead
from pivotlab.train.lmhead import install_supervised_head, unsupported
from tests.train.conftest import COSINE, assert_relative, part_gradients

FIELDS = ("log_probs", "entropy", "is_top1", "label_mask")


@pytest.fixture
def models(tiny_model_dir):
    """The same MLLM twice with TRL's fused head (SFT's outputs); the second also scores
    the labelled positions only."""
    pair = []
    for _ in range(2):
        model, _ = load(tiny_model_dir)
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        pair.append(model)
    assert install_supervised_head(pair[1]) is None
    return pair


def batch(model) -> dict:
    """Four rows of random tokens after an image, a few labels each, one row all masked."""
    torch.manual_seed(0)
    config = model.config
    image = config.image_token_id
    tokens_per_image = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    vocab = config.text_config.vocab_size
    text = torch.randint(0, vocab, (4, 12))
    text[text == image] = 0
    ids = torch.cat([torch.full((4, tokens_per_image), image), text], dim=1)
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]
    labels[1, -5:-1] = ids[1, -5:-1]
    labels[2, tokens_per_image + 1] = ids[2, tokens_per_image + 1]
    pixels = torch.randn(4, 3, config.vision_config.image_size, config.vision_config.image_size)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "labels": labels}  # fmt: skip


def scored(model, inputs: dict, **extra):
    model.zero_grad()
    output = model(**inputs, fused_lm_head=True, **extra)
    output.loss.backward()
    return output, part_gradients(model)


@pytest.mark.parametrize("chunked", [False, True])
def test_the_labelled_positions_give_trls_numbers(models, monkeypatch, chunked) -> None:
    if chunked:  # a few positions per chunk, each recomputed in the backward
        monkeypatch.setattr(lmhead, "LOGITS_PER_CHUNK", 3 * models[1].config.text_config.vocab_size)
    inputs = batch(models[0])
    for extra in ({}, {"num_items_in_batch": torch.tensor(11)}):
        trl, trl_gradients = scored(models[0], inputs, **extra)
        ours, gradients = scored(models[1], inputs, **extra)
        assert_relative(ours.loss.detach(), trl.loss.detach())
        for field in FIELDS:
            expected, actual = getattr(trl, field), getattr(ours, field)
            assert actual.shape == expected.shape and actual.dtype == expected.dtype, field
            assert torch.allclose(actual.float(), expected.float(), atol=1e-5), field
        for part, gradient in trl_gradients.items():
            cosine = F.cosine_similarity(gradients[part], gradient, dim=0).item()
            assert cosine >= COSINE, f"{part}: cosine {cosine}"


def test_other_calls_reach_the_stock_forward(models) -> None:
    inputs = batch(models[0])
    plain = {k: v for k, v in inputs.items() if k != "labels"}
    expected = models[0](**plain).logits
    assert torch.allclose(models[1](**plain).logits, expected, atol=1e-6)
    assert torch.allclose(models[1](**inputs).loss, models[0](**inputs).loss, atol=1e-6)


def test_installing_twice_wraps_once_and_a_new_trl_head_is_wrapped_again(models) -> None:
    model = models[1]
    wrapped = model.forward
    assert install_supervised_head(model) is None
    assert model.forward == wrapped
    add_fused_lm_head(model, outputs=("log_probs",))  # a second trainer on the same model
    assert install_supervised_head(model) is None
    assert model.forward != wrapped and getattr(model.forward, lmhead.INSTALLED)


def test_a_head_that_transforms_its_logits_keeps_trls(tiny_model_dir) -> None:
    model, _ = load(tiny_model_dir)
    model.config.text_config.final_logit_softcapping = 30.0
    add_fused_lm_head(model)
    stock = model.forward
    assert "final_logit_softcapping" in unsupported(model)
    assert install_supervised_head(model) is not None
    assert model.forward == stock
