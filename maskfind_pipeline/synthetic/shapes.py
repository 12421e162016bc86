"""Products as signed distance fields in their own (local, pixel-scaled) coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from maskfind_pipeline.synthetic.textures import LOCAL_TILE, local_tile


@dataclass(frozen=True, eq=False)
class Fields:
    """What a product looks like at each pixel of a window.

    Attributes:
        sdf: signed distance to the outline in pixels, negative inside (the mask is `sdf < 0`).
        height: 0..1 surface height above the support, 0 outside.
        groove: 0..1 indentations seen in the image but part of the product.
        pattern: 0..1 decoration or print on the surface.
        density: internal density for radiographs (about 0..2).
        relief: the product's thickness in pixels, for shading slopes.
    """

    sdf: np.ndarray
    height: np.ndarray
    groove: np.ndarray
    pattern: np.ndarray
    density: np.ndarray
    relief: float


class Product(Protocol):
    """A drawn product instance: its half extents and its fields at local coordinates."""

    extent: tuple[float, float]

    def fields(self, u: np.ndarray, v: np.ndarray) -> Fields: ...


def draw_product(name: str, rng: np.random.Generator, unit: float) -> Product:
    """Draw a random instance of product `name`; `unit` is pixels per product-size unit."""
    return _DRAWERS[name](rng, unit)


def rounded_box(u: np.ndarray, v: np.ndarray, a: float, b: float, r: float) -> np.ndarray:
    """Signed distance to a rectangle of half sides a, b with corner radius r."""
    qx = np.abs(u) - (a - r)
    qy = np.abs(v) - (b - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def local_texture(u: np.ndarray, v: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """The shared blob texture at local coordinates, shifted by `offset`."""
    mask = LOCAL_TILE - 1
    iy = (v.astype(np.int32) + offset[0]) & mask
    ix = (u.astype(np.int32) + offset[1]) & mask
    return local_tile()[iy, ix]


def _grooves(t: np.ndarray, cells: int, length: float, width: float) -> np.ndarray:
    pos = (t + length / 2) * (cells / length)
    dist = np.abs(pos - np.round(pos)) * (length / cells)
    return np.clip(1 - dist / width, 0, 1)


def _offset(rng: np.random.Generator) -> tuple[int, int]:
    oy, ox = rng.integers(0, LOCAL_TILE, size=2)
    return int(oy), int(ox)


@dataclass(frozen=True)
class ChocBar:
    """A segmented chocolate bar: grooves split it into rows x columns of pieces."""

    a: float
    b: float
    cols: int
    rows: int
    groove_width: float
    offset: tuple[int, int]

    @property
    def extent(self) -> tuple[float, float]:
        return self.a, self.b

    def fields(self, u: np.ndarray, v: np.ndarray) -> Fields:
        sdf = rounded_box(u, v, self.a, self.b, min(2.0, self.b / 4))
        groove = _grooves(u, self.cols, 2 * self.a, self.groove_width)
        if self.rows > 1:
            groove = np.maximum(groove, _grooves(v, self.rows, 2 * self.b, self.groove_width))
        bevel = np.clip(-sdf / max(self.b * 0.2, 1.5), 0, 1)
        height = bevel * (1 - 0.6 * groove)
        pattern = local_texture(u, v, self.offset)
        density = 1 - 0.5 * groove + 0.3 * (pattern - 0.5)
        return Fields(sdf, height, groove, pattern, density, self.b * 0.5)


def _choc_bar(rng: np.random.Generator, unit: float) -> ChocBar:
    a = unit * rng.uniform(0.22, 0.32)
    b = a * rng.uniform(0.3, 0.45)
    cols, rows = int(rng.integers(3, 7)), int(rng.integers(1, 3))
    return ChocBar(a, b, cols, rows, max(1.2, unit * 0.01), _offset(rng))


@dataclass(frozen=True)
class RoundedBar:
    """A coated bar with strongly rounded ends, coating ripples and inclusions (nuts)."""

    a: float
    b: float
    r: float
    ripple: float
    offset: tuple[int, int]

    @property
    def extent(self) -> tuple[float, float]:
        return self.a, self.b

    def fields(self, u: np.ndarray, v: np.ndarray) -> Fields:
        sdf = rounded_box(u, v, self.a, self.b, self.r)
        height = np.sqrt(np.clip(-sdf / (self.b * 0.7), 0, 1))
        blobs = local_texture(u, v, self.offset)
        pattern = 0.5 + 0.5 * np.sin(u * self.ripple + 6 * blobs)
        nuts = np.clip((blobs - 0.55) * 5, 0, 1)
        groove = 0.3 * nuts
        return Fields(sdf, height, groove, pattern, 0.8 + 0.8 * nuts, self.b * 0.7)


def _rounded_bar(rng: np.random.Generator, unit: float) -> RoundedBar:
    a = unit * rng.uniform(0.2, 0.3)
    b = a * rng.uniform(0.25, 0.4)
    return RoundedBar(
        a, b, b * rng.uniform(0.6, 0.98), rng.uniform(0.2, 0.5) * 256 / max(unit, 1), _offset(rng)
    )


@dataclass(frozen=True)
class Praline:
    """A round praline: a domed shell, a drizzle decoration and a filling with a nut core."""

    a: float
    b: float
    drizzle: tuple[float, float, float]
    offset: tuple[int, int]

    @property
    def extent(self) -> tuple[float, float]:
        return self.a, self.b

    def fields(self, u: np.ndarray, v: np.ndarray) -> Fields:
        un, vn = u / self.a, v / self.b
        r = np.sqrt(un * un + vn * vn)
        sdf = (r - 1) * min(self.a, self.b)
        height = np.sqrt(np.clip(1 - r * r, 0, 1))
        freq, cos, sin = self.drizzle
        wave = np.sin((u * cos + v * sin) * freq + 2.5 * np.sin(v * cos * freq * 0.4))
        pattern = np.clip((wave - 0.6) * 3, 0, 1)
        blobs = local_texture(u, v, self.offset)
        shell = np.clip((r - 0.75) * 6, 0, 1)
        density = 0.55 + 0.6 * shell + 0.7 * np.clip((0.35 - r) * 5, 0, 1) + 0.2 * blobs
        return Fields(sdf, height, 0.3 * pattern, pattern, density, min(self.a, self.b) * 0.8)


def _praline(rng: np.random.Generator, unit: float) -> Praline:
    a = unit * rng.uniform(0.11, 0.19)
    angle = rng.uniform(0, np.pi)
    drizzle = (
        rng.uniform(0.3, 0.6) * 256 / max(unit, 1),
        float(np.cos(angle)),
        float(np.sin(angle)),
    )
    return Praline(a, a * rng.uniform(0.85, 1.0), drizzle, _offset(rng))


@dataclass(frozen=True)
class Wafer:
    """A wafer in a wrapper: a pillow-shaped body, crimped zig-zag seals at both ends, a print."""

    a: float
    b: float
    crimp: float
    teeth: float
    band: float
    offset: tuple[int, int]

    @property
    def extent(self) -> tuple[float, float]:
        return self.a, self.b

    def fields(self, u: np.ndarray, v: np.ndarray) -> Fields:
        au = np.abs(u)
        phase = np.abs(np.mod(v / self.teeth, 1.0) - 0.5) * 2
        end = self.a - self.teeth * 0.5 * phase
        in_crimp = np.clip((au - (self.a - self.crimp)) / 2, 0, 1)
        half_width = self.b * (1 - 0.08 * in_crimp)
        sdf = np.maximum(au - end, np.abs(v) - half_width)
        body = np.sqrt(np.clip(1 - (v / self.b) ** 2, 0, 1))
        height = body * (1 - 0.8 * in_crimp) * (sdf < 0)
        ridges = 0.5 + 0.5 * np.sin(v * (2 * np.pi / max(self.teeth / 2, 1.5)))
        groove = in_crimp * ridges
        wrinkle = local_texture(u, v, self.offset)
        pattern = (au < self.band).astype(np.float32) * 0.8 + 0.2 * wrinkle
        layers = 0.5 + 0.5 * np.sin(v * (6 * np.pi / self.b))
        density = (1 - in_crimp) * (0.7 + 0.3 * layers) + 0.15 * in_crimp
        return Fields(sdf, height, groove, pattern, density, self.b * 0.4)


def _wafer(rng: np.random.Generator, unit: float) -> Wafer:
    a = unit * rng.uniform(0.26, 0.34)
    b = a * rng.uniform(0.25, 0.38)
    crimp = a * rng.uniform(0.1, 0.16)
    teeth = max(2.0, unit * rng.uniform(0.012, 0.02))
    return Wafer(a, b, crimp, teeth, a * rng.uniform(0.2, 0.45), _offset(rng))


_DRAWERS = {
    "choc_bar": _choc_bar,
    "rounded_bar": _rounded_bar,
    "praline": _praline,
    "wafer": _wafer,
}
