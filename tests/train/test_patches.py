"""A patch convolution as one matrix product: the convolution's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pivotlab.model import load
from pivotlab.train.patches import PatchEmbedding, install_patch_matmul, is_patch_convolution


@pytest.mark.parametrize("size", [32, 35])  # 35: the convolution drops the remainder too
def test_the_matrix_product_is_the_convolution(size) -> None:
    torch.manual_seed(0)
    convolution = nn.Conv2d(3, 16, kernel_size=8, stride=8)
    pixels = torch.randn(4, 3, size, size, requires_grad=True)
    expected = convolution(pixels)
    inputs = [pixels, *convolution.parameters()]
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    convolution.__class__ = PatchEmbedding
    actual = convolution(pixels)
    grads = torch.autograd.grad(actual.square().sum(), inputs)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_only_non_overlapping_patch_convolutions_qualify() -> None:
    assert is_patch_convolution(nn.Conv2d(3, 8, 4, stride=4))
    assert not is_patch_convolution(nn.Conv2d(3, 8, 4, stride=2))
    assert not is_patch_convolution(nn.Conv2d(3, 8, 4, stride=4, padding=1))
    assert not is_patch_convolution(nn.Conv2d(4, 8, 4, stride=4, groups=2))


def test_the_tower_changes_class_only(tiny_model_dir) -> None:
    model, _ = load(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = torch.randn(2, 3, 32, 32)
    expected = model.model.get_image_features(pixel_values=pixels)
    assert install_patch_matmul(model) is None
    classes = {type(m) for m in model.model.vision_tower.modules()}
    assert PatchEmbedding in classes and nn.Conv2d not in classes
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    actual = model.model.get_image_features(pixel_values=pixels)
    for got, want in zip(actual.pooler_output, expected.pooler_output, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_a_tower_without_patch_convolutions_is_left_alone(tiny_model_dir) -> None:
    model, _ = load(tiny_model_dir)
    for module in model.model.vision_tower.modules():
        if isinstance(module, nn.Conv2d):
            module.padding = (1, 1)
    assert "no stride-equals-kernel" in install_patch_matmul(model)
