"""Rendering: scene graph -> RGB image, semantic mask, instance mask.

Shapes are rasterised with Pillow (no anti-aliasing) one object at a time and composited
in z-order with numpy, so the masks are exact by construction: a pixel belongs to the
object whose colour it shows. Rendering also fills each object's ``bbox`` (amodal, from its
own full mask, ``[x0, y0, x1, y1)`` with exclusive ends), ``area``, ``visible_pixels`` and
how much of its glyph remains visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pivotlab.world import vocab
from pivotlab.world.scene import MIN_TEXT_PX, Background, Scene, SceneObject, glyph_px

PIXEL_NOISE = 5
CHART_TEXT_RGB = (30, 30, 30)


@dataclass
class Rendered:
    """Pixels and masks of one scene, plus what questions need beyond the scene graph."""

    image: np.ndarray  # (H, W, 3) uint8
    semantic: np.ndarray  # (H, W) uint8, class ids from vocab.SEMANTIC_CLASSES
    instances: np.ndarray  # (H, W) uint8, object index + 1, 0 = none
    overlaps: dict[tuple[int, int], int]  # (i, j) with i < j -> overlapping amodal pixels


@lru_cache(maxsize=8)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1), shape (H, W) each."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="xy")


def render_background(bg: Background, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) uint8 texture mixing the background's two tones."""
    xx, yy = _unit_grid(size)
    if bg.kind == "plain":
        weight = np.zeros((size, size), np.float32)
    elif bg.kind == "noise":
        coarse = max(2, round(bg.frequency))
        low = np.random.default_rng(bg.noise_seed).random((coarse, coarse), dtype=np.float32)
        weight = np.asarray(
            Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR), np.float32
        )
    elif bg.kind == "stripes":
        phase = xx * np.cos(bg.angle) + yy * np.sin(bg.angle)
        weight = (np.sin(2 * np.pi * bg.frequency * phase) > 0).astype(np.float32)
    elif bg.kind == "checker":
        f = round(bg.frequency)
        weight = ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(np.float32)
    elif bg.kind == "gradient":
        weight = np.clip(xx * np.cos(bg.angle) + yy * np.sin(bg.angle), 0, 1)
    elif bg.kind == "dots":
        f = round(bg.frequency) + 2
        dx, dy = (xx * f) % 1 - 0.5, (yy * f) % 1 - 0.5
        weight = ((dx * dx + dy * dy) < 0.06).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    a = np.array(bg.tone_a, np.float32)
    b = np.array(bg.tone_b, np.float32)
    image = a + weight[..., None] * (b - a)
    noise = rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, size=image.shape, dtype=np.int16)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _polygon(n: int, radius: float, start_deg: float, x_scale: float = 1.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(n) * 360.0 / n)
    return np.stack([x_scale * radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(radius: float) -> np.ndarray:
    angles = np.deg2rad(-90.0 + np.arange(10) * 36.0)
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(radius: float) -> np.ndarray:
    w = 0.32 * radius
    r = radius
    return np.array(
        [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    )


SHAPE_OUTLINES = {
    "square": lambda r: _polygon(4, r, 45.0),
    "diamond": lambda r: _polygon(4, r, -90.0, x_scale=0.78),
    "triangle": lambda r: _polygon(3, r, -90.0) + np.array([0.0, 0.18 * r]),
    "hexagon": lambda r: _polygon(6, r, 0.0),
    "star": _star,
    "cross": _cross,
}


def object_mask(obj: SceneObject, size: int) -> np.ndarray:
    """The object's full (amodal) footprint as a (size, size) bool array."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = obj.center
    r = obj.diameter / 2
    if obj.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if obj.shape == "ring":
            inner = 0.55 * r
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        outline = SHAPE_OUTLINES[obj.shape](r)
        theta = np.deg2rad(obj.rotation)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = outline @ rotation.T + np.array([cx, cy])
        draw.polygon([tuple(p) for p in points.tolist()], fill=255)
    return np.asarray(canvas) > 0


@lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


@lru_cache(maxsize=1024)
def text_alpha(text: str, px: int) -> np.ndarray:
    """Coverage in [0, 1] of ``text`` drawn at ``px`` pixels, tightly cropped."""
    font = _font(px)
    width = int(px * (0.8 * len(text) + 2))
    canvas = Image.new("L", (width, 3 * px), 0)
    ImageDraw.Draw(canvas).text((width / 2, 1.5 * px), text, fill=255, font=font, anchor="mm")
    alpha = np.asarray(canvas, np.float32) / 255.0
    rows, cols = np.nonzero(alpha > 0)
    return alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _paste_region(
    center: tuple[float, float], shape: tuple[int, int], size: int
) -> tuple[slice, slice, slice, slice]:
    """Destination and source slices for pasting a ``shape`` patch centred at ``center``."""
    h, w = shape
    y0 = round(center[1] - h / 2)
    x0 = round(center[0] - w / 2)
    dy0, dx0 = max(y0, 0), max(x0, 0)
    dy1, dx1 = min(y0 + h, size), min(x0 + w, size)
    return (
        slice(dy0, dy1),
        slice(dx0, dx1),
        slice(dy0 - y0, dy1 - y0),
        slice(dx0 - x0, dx1 - x0),
    )


def _blend_text(
    image: np.ndarray,
    alpha: np.ndarray,
    center: tuple[float, float],
    rgb: tuple[int, int, int],
    within: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``rgb`` into ``image`` with ``alpha`` centred at ``center``, only inside
    ``within`` when given; returns the full-size coverage that was applied."""
    size = image.shape[0]
    ys, xs, sy, sx = _paste_region(center, alpha.shape, size)
    coverage = np.zeros(image.shape[:2], np.float32)
    coverage[ys, xs] = alpha[sy, sx]
    if within is not None:
        coverage *= within
    cov = coverage[..., None]
    image[:] = (image * (1 - cov) + np.array(rgb, np.float32) * cov).astype(np.uint8)
    return coverage


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def glyph_rgb(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light objects, white on dark ones."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (20, 20, 20) if luminance > 140 else (245, 245, 245)


def _render_objects(scene: Scene, image: np.ndarray) -> Rendered:
    size = scene.size
    semantic = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    masks = [object_mask(o, size) for o in scene.objects]
    glyph_masks: dict[int, np.ndarray] = {}
    for obj in sorted(scene.objects, key=lambda o: o.z):
        mask = masks[obj.index]
        image[mask] = obj.rgb
        semantic[mask] = vocab.SEMANTIC_CLASSES.index(obj.shape)
        instances[mask] = obj.index + 1
        if obj.glyph is not None:
            alpha = text_alpha(obj.glyph, glyph_px(obj.diameter))
            # Clipped to the shape: ink outside it would belong to no object.
            coverage = _blend_text(image, alpha, obj.center, glyph_rgb(obj.rgb), within=mask)
            glyph_masks[obj.index] = coverage > 0.5
    visible = np.bincount(instances.ravel(), minlength=len(scene.objects) + 1)
    overlaps = {}
    for obj in scene.objects:
        obj.bbox = _bbox(masks[obj.index])
        obj.area = int(masks[obj.index].sum())
        obj.visible_pixels = int(visible[obj.index + 1])
        if obj.index in glyph_masks:
            ink = glyph_masks[obj.index]
            shown = ink & (instances == obj.index + 1)
            obj.glyph_visible = float(shown.sum() / max(ink.sum(), 1))
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            shared = int((masks[i] & masks[j]).sum())
            if shared:
                overlaps[(i, j)] = shared
    return Rendered(image, semantic, instances, overlaps)


def chart_font_px(size: int) -> int:
    return max(MIN_TEXT_PX, round(size * 0.14))


def _render_chart(scene: Scene, image: np.ndarray, max_value: int) -> Rendered:
    size = scene.size
    semantic = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    font_px = chart_font_px(size)
    top = font_px + 3
    baseline = size - font_px - 3
    left, right = round(0.05 * size), size - round(0.05 * size)
    slot = (right - left) / len(scene.bars)
    image[baseline, left:right] = CHART_TEXT_RGB
    for bar in scene.bars:
        height = (baseline - top) * bar.value / max_value
        x_center = left + (bar.index + 0.5) * slot
        half = 0.3 * slot
        x0, x1 = round(x_center - half), round(x_center + half)
        y0 = round(baseline - height)
        image[y0:baseline, x0:x1] = bar.rgb
        semantic[y0:baseline, x0:x1] = vocab.BAR_CLASS
        instances[y0:baseline, x0:x1] = bar.index + 1
        bar.bbox = (x0, y0, x1, baseline)
        for text, y in (
            (str(bar.value), y0 - font_px / 2 - 1),
            (bar.label, baseline + 2 + font_px / 2),
        ):
            coverage = _blend_text(image, text_alpha(text, font_px), (x_center, y), CHART_TEXT_RGB)
            semantic[coverage > 0.5] = vocab.TEXT_CLASS
    return Rendered(image, semantic, instances, {})


def _render_text(scene: Scene, image: np.ndarray) -> Rendered:
    assert scene.text is not None
    spec = scene.text
    coverage = _blend_text(image, text_alpha(spec.content, spec.font_px), spec.center, spec.rgb)
    ink = coverage > 0.5
    semantic = np.where(ink, vocab.TEXT_CLASS, 0).astype(np.uint8)
    instances = ink.astype(np.uint8)
    spec.bbox = _bbox(ink)
    return Rendered(image, semantic, instances, {})


def render(scene: Scene, rng: np.random.Generator, max_value: int) -> Rendered:
    """Render ``scene``; ``rng`` drives only pixel noise, so masks never depend on it."""
    image = render_background(scene.background, scene.size, rng)
    if scene.kind == "objects":
        return _render_objects(scene, image)
    if scene.kind == "chart":
        return _render_chart(scene, image, max_value)
    if scene.kind == "text":
        return _render_text(scene, image)
    raise ValueError(f"unknown scene kind {scene.kind!r}")
