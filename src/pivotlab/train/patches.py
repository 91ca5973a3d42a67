"""A vision tower's patch embedding as one matrix product (``train.speed: fast``).

ViT-style towers (SigLIP, CLIP) cut the image into patches with a ``Conv2d`` whose stride is
its kernel: every output is one patch's pixels times the kernel, a matrix product in all but
name. On the CPU, oneDNN's backward for the tiny tower's 32 x 32 kernel is slow for what it
computes; as one matrix product the same weight gradient is cheap. Its share of a Stage-1
step is small, within the benchmark's run-to-run noise (``docs/performance.md``); it is kept
because it is exact. ``install_patch_matmul`` turns such a convolution into
``PatchEmbedding``: the same module, parameters and state-dict keys (it only changes class),
computing the same outputs and gradients within float rounding
(``tests/train/test_patches.py``). A convolution with padding, dilation, groups or a stride
other than its kernel is left as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pivotlab.model.parts import part_modules


class PatchEmbedding(nn.Conv2d):
    """A ``Conv2d`` whose stride is its kernel, computed as patches x kernel."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixels.shape
        (ph, pw), out = self.kernel_size, self.out_channels
        rows, cols = height // ph, width // pw
        pixels = pixels[..., : rows * ph, : cols * pw]  # a strided conv drops the remainder
        patches = pixels.reshape(batch, channels, rows, ph, cols, pw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, -1)
        embedded = F.linear(patches, self.weight.reshape(out, -1), self.bias)
        return embedded.transpose(1, 2).reshape(batch, out, rows, cols)


def is_patch_convolution(module: nn.Module) -> bool:
    """A plain ``Conv2d`` that cuts non-overlapping patches (stride = kernel, no padding,
    dilation or groups)."""
    return (
        type(module) is nn.Conv2d
        and module.stride == module.kernel_size
        and module.padding in ((0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def install_patch_matmul(model) -> str | None:
    """Turn the vision tower's patch convolutions into ``PatchEmbedding``; returns why
    nothing was changed, or None."""
    found = [
        module
        for tower in part_modules(model).get("vision", [])
        for module in tower.modules()
        if is_patch_convolution(module)
    ]
    if not found:
        return "the vision tower has no stride-equals-kernel patch convolution"
    for module in found:
        module.__class__ = PatchEmbedding
    return None
