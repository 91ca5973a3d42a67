"""The visual-token grid resize shared by VIRAL's teacher and the alignment analysis."""

from __future__ import annotations

import pytest
import torch

from pivotlab.errors import PivotlabError
from pivotlab.model.grid import resize_patch_grid


def test_patch_grid_resize_halves_a_raster_grid_by_block_means() -> None:
    tokens = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(0))  # 8x8 grid
    blocks = tokens.reshape(2, 4, 2, 4, 2, 3).mean((2, 4)).reshape(2, 16, 3)
    torch.testing.assert_close(resize_patch_grid(tokens, 4), blocks)
    assert resize_patch_grid(tokens, 8) is tokens
    with pytest.raises(PivotlabError, match="square grid"):
        resize_patch_grid(tokens[:, :60], 4)
