"""A product placed on a background: pose, local coordinates, the exact mask."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maskfind_pipeline.synthetic.shapes import Fields, draw_product
from maskfind_pipeline.synthetic.textures import Background, background

Window = tuple[slice, slice]


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything a camera model needs to form an image.

    Attributes:
        size: image side in pixels.
        kind: background kind; product: product name.
        background: full-frame background maps.
        mask: full-frame product mask (bool).
        window: the slices of the frame that contain the product.
        inside: `mask[window]`.
        fields: the product's fields over `window`.
        u, v: local product coordinates over `window`; extent: the product's half extents.
    """

    size: int
    kind: str
    product: str
    background: Background
    mask: np.ndarray
    window: Window
    inside: np.ndarray
    fields: Fields
    u: np.ndarray
    v: np.ndarray
    extent: tuple[float, float]


def build_scene(product: str, kind: str, rng: np.random.Generator, size: int) -> Scene:
    """Draw a product instance, a pose (with mild perspective) and a background crop."""
    matrix = _pose(rng, size)
    shape = draw_product(product, rng, size * rng.uniform(0.9, 1.5))
    window = _window(matrix, shape.extent, size)
    u, v = _local_coords(np.linalg.inv(matrix), window)
    fields = shape.fields(u, v)
    inside = fields.sdf < 0
    mask = np.zeros((size, size), dtype=bool)
    mask[window] = inside
    bg = background(kind, rng, size)
    return Scene(size, kind, product, bg, mask, window, inside, fields, u, v, shape.extent)


def _pose(rng: np.random.Generator, size: int) -> np.ndarray:
    """Local product coordinates -> image pixels: rotation, translation, then a homography."""
    cx, cy = rng.uniform(0.15, 0.85, size=2) * size
    if rng.random() < 0.3:
        depth = rng.uniform(-0.02, 0.08) * size
        near = depth if rng.random() < 0.5 else size - depth
        cx, cy = (near, cy) if rng.random() < 0.5 else (cx, near)
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    affine = np.array([[c, -s, cx], [s, c, cy], [0, 0, 1]])
    px, py = rng.uniform(-0.4, 0.4, size=2) / size
    h = size / 2
    centre = np.array([[1, 0, h], [0, 1, h], [0, 0, 1]])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]])
    return centre @ perspective @ np.linalg.inv(centre) @ affine


def _window(matrix: np.ndarray, extent: tuple[float, float], size: int) -> Window:
    a, b = extent
    corners = np.array([[-a, -b, 1], [a, -b, 1], [a, b, 1], [-a, b, 1]]).T
    mapped = matrix @ corners
    xs, ys = mapped[0] / mapped[2], mapped[1] / mapped[2]
    x0, x1 = max(0, math.floor(xs.min())), min(size, math.ceil(xs.max()) + 1)
    y0, y1 = max(0, math.floor(ys.min())), min(size, math.ceil(ys.max()) + 1)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _local_coords(inverse: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = window
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 0.5
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + 0.5
    g = inverse.tolist()
    den = g[2][0] * x + g[2][1] * y + g[2][2]
    u = (g[0][0] * x + g[0][1] * y + g[0][2]) / den
    v = (g[1][0] * x + g[1][1] * y + g[1][2]) / den
    return u, v


def shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx) pixels, filled with zeros where nothing moved in."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out
