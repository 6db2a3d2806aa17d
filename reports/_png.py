"""A tiny PNG encoder and the colour map for heatmaps, in the standard library.

A heatmap of 50 layers × 400 step bins is 20,000 cells: as SVG rectangles that is about a
megabyte, as one inlined PNG (drawn scaled-up inside the SVG with ``image-rendering:
pixelated``) a few kilobytes. Nothing here knows about runs or findings.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

__all__ = ["png_rgba", "png_data_uri", "colormap", "NONFINITE_RGB", "NONPOSITIVE_RGB"]

# Viridis (matplotlib), sampled at nine points: perceptually uniform, readable for the
# colour-blind, and distinct from the red used for non-finite cells.
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
NONFINITE_RGB = (228, 26, 28)
NONPOSITIVE_RGB = (190, 190, 190)


def colormap(t: np.ndarray) -> np.ndarray:
    """Viridis RGB (uint8, shape ``t.shape + (3,)``) for ``t`` in [0, 1] (clipped)."""
    t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)
    pos = t * (len(_VIRIDIS) - 1)
    i = np.minimum(pos.astype(np.int64), len(_VIRIDIS) - 2)
    f = (pos - i)[..., None]
    rgb = _VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f
    return np.rint(rgb).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_rgba(pixels: np.ndarray) -> bytes:
    """Encode ``pixels`` (uint8, shape (height, width, 4)) as a PNG file."""
    if pixels.ndim != 3 or pixels.shape[2] != 4:
        raise ValueError(f"pixels must have shape (h, w, 4), got {pixels.shape!r}")
    h, w, _ = pixels.shape
    rows = np.concatenate(
        [np.zeros((h, 1), np.uint8), pixels.astype(np.uint8).reshape(h, w * 4)], axis=1
    )
    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def png_data_uri(pixels: np.ndarray) -> str:
    """``data:image/png;base64,...`` for ``pixels`` (see :func:`png_rgba`)."""
    return "data:image/png;base64," + base64.b64encode(png_rgba(pixels)).decode("ascii")
