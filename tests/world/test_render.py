"""Rendering: masks are exact, boxes and pixel counts agree with them, every size works."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pivotlab.world import WorldConfig, vocab
from pivotlab.world.generate import sample_scene, stream
from pivotlab.world.png import encode_png
from pivotlab.world.render import object_mask, render


def _rendered(size: int, index: int, split: str = "train"):
    cfg = WorldConfig(split=split, n=100, seed=11, size=size)
    scene = sample_scene(cfg, index)
    return scene, render(scene, stream(cfg, 1, index), cfg.chart_max_value)


@pytest.mark.parametrize("size", [32, 64, 384])
def test_masks_agree_with_the_scene_graph(size: int) -> None:
    checked = 0
    for index in range(12 if size < 384 else 4):
        scene, rendered = _rendered(size, index)
        assert rendered.image.shape == (size, size, 3) and rendered.image.dtype == np.uint8
        if scene.kind != "objects":
            continue
        counts = np.bincount(rendered.instances.ravel(), minlength=len(scene.objects) + 1)
        for obj in scene.objects:
            pixels = rendered.instances == obj.index + 1
            assert counts[obj.index + 1] == obj.visible_pixels <= obj.area
            expected_class = vocab.SEMANTIC_CLASSES.index(obj.shape)
            assert np.all(rendered.semantic[pixels] == expected_class)
            if pixels.any():
                ys, xs = np.nonzero(pixels)
                x0, y0, x1, y1 = obj.bbox
                assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            checked += 1
        assert np.all((rendered.semantic == 0) == (rendered.instances == 0))
    assert checked > 0


def test_visible_object_pixels_show_the_object_colour() -> None:
    for index in range(20):
        scene, rendered = _rendered(64, index)
        for obj in scene.objects:
            if obj.glyph is not None:
                continue  # glyph ink is blended over the colour
            pixels = rendered.image[rendered.instances == obj.index + 1]
            assert np.all(pixels == np.array(obj.rgb, np.uint8))


def test_occlusion_follows_z_order() -> None:
    seen = 0
    for index in range(80):
        scene, rendered = _rendered(64, index)
        for (i, j), shared in rendered.overlaps.items():
            front = i if scene.objects[i].z > scene.objects[j].z else j
            back = j if front == i else i
            region = object_mask(scene.objects[i], 64) & object_mask(scene.objects[j], 64)
            assert region.sum() == shared
            assert not np.any(rendered.instances[region] == back + 1)
            assert scene.objects[back].visible_pixels <= scene.objects[back].area - shared
            seen += 1
    assert seen > 5


def test_chart_bars_are_as_tall_as_their_values() -> None:
    for index in range(60):
        scene, rendered = _rendered(64, index)
        if scene.kind != "chart":
            continue
        heights = {b.value: b.bbox[3] - b.bbox[1] for b in scene.bars}
        ordered = [heights[v] for v in sorted(heights)]
        assert ordered == sorted(ordered)
        assert np.any(rendered.semantic == vocab.TEXT_CLASS)
        return
    pytest.fail("no chart scene among the first 60")


def test_png_writer_round_trips_through_pillow() -> None:
    rng = np.random.default_rng(0)
    for array in (
        rng.integers(0, 256, (17, 23, 3), dtype=np.uint8),
        rng.integers(0, 11, (9, 5), dtype=np.uint8),
    ):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))
        assert np.array_equal(decoded, array)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))
