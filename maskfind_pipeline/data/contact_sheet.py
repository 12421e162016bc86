"""A grid of images with their masks tinted and outlined: for eyeballing samples (the
generator's, a dataset version's new ones)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_FILL = np.array([255, 0, 200], dtype=np.float32)
_OUTLINE = (0, 255, 60)
_CAPTION = 14


def contact_sheet(
    samples: Sequence[tuple[str, np.ndarray, np.ndarray]], *, columns: int = 4, tile: int = 192
) -> Image.Image:
    """Lay out (caption, image, mask) triples in a grid, each mask tinted and outlined.

    Args:
        samples: caption, image (HxW or HxWx3 uint8) and mask (HxW bool) of each tile.
        columns: tiles per row.
        tile: the side of each tile's image in pixels (a caption strip goes below it).
    """
    rows = max(1, -(-len(samples) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + _CAPTION)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (caption, image, mask) in enumerate(samples):
        x, y = (i % columns) * tile, (i // columns) * (tile + _CAPTION)
        sheet.paste(_overlay(image, mask, tile), (x, y))
        draw.text((x + 3, y + tile + 1), caption, fill=(235, 235, 235))
    return sheet


def _overlay(image: np.ndarray, mask: np.ndarray, tile: int) -> Image.Image:
    rgb = Image.fromarray(image).convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (tile, tile), Image.Resampling.NEAREST
    )
    inside = np.asarray(small) > 0
    pixels = np.asarray(rgb, dtype=np.float32)
    pixels[inside] = 0.75 * pixels[inside] + 0.25 * _FILL
    tinted = Image.fromarray(pixels.astype(np.uint8))
    edge = np.asarray(small.filter(ImageFilter.MaxFilter(3))) != np.asarray(
        small.filter(ImageFilter.MinFilter(3))
    )
    tinted.paste(_OUTLINE, mask=Image.fromarray(edge.astype(np.uint8) * 255))
    return tinted


def contact_sheet_png(
    samples: Sequence[tuple[str, np.ndarray, np.ndarray]], *, columns: int = 6, tile: int = 128
) -> bytes:
    """`contact_sheet` as PNG bytes."""
    buffer = io.BytesIO()
    contact_sheet(samples, columns=columns, tile=tile).save(buffer, format="PNG")
    return buffer.getvalue()
