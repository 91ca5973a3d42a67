"""Minimal PNG writer for 8-bit grey and RGB arrays.

Pillow spends about 0.5 ms on a 64-px RGB save, mostly choosing a row filter per line;
at hundreds of scenes per second and three PNGs per scene that was a third of the
generator's time. Writing filter-0 rows through zlib gives standard PNGs (Pillow and every
viewer read them) in about a quarter of the time, deterministically.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {2: 0, 3: 2}  # array ndim -> PNG colour type (grey, truecolour)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(array: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a (H, W) or (H, W, 3) uint8 array."""
    if (
        array.dtype != np.uint8
        or array.ndim not in _COLOR_TYPES
        or (array.ndim == 3 and array.shape[2] != 3)
    ):
        raise ValueError(
            f"expected a (H, W) or (H, W, 3) uint8 array, got {array.dtype} {array.shape}"
        )
    height, width = array.shape[:2]
    rows = np.zeros((height, 1 + array[0].size), np.uint8)  # column 0: filter type 0 (none)
    rows[:, 1:] = array.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[array.ndim], 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _chunk(b"IEND", b"")
    )
