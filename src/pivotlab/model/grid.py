"""The visual-token grid: patch tokens in raster order, resized to another grid's side
(VIRAL's teacher and the alignment analysis compare towers whose grids differ)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pivotlab.errors import PivotlabError


def resize_patch_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(N, g*g, D) raster-order patch tokens -> (N, side*side, D), bilinear on the grid."""
    count, patches, width = tokens.shape
    grid = round(patches**0.5)
    if grid * grid != patches:
        raise PivotlabError(f"{patches} patch tokens do not form a square grid")
    if grid == side:
        return tokens
    maps = tokens.transpose(1, 2).reshape(count, width, grid, grid)
    maps = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False)
    return maps.reshape(count, width, side * side).transpose(1, 2)
