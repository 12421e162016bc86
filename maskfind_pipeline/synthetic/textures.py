"""Deterministic texture tiles, built once per (kind, size) and cropped at random per sample."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

LOCAL_TILE = 256


@dataclass(frozen=True, eq=False)
class Background:
    """Per-pixel maps of a background: texture (about 0..1), relief height and relief edges."""

    texture: np.ndarray
    height: np.ndarray
    edges: np.ndarray


def fixed_rng(*keys: str | int) -> np.random.Generator:
    """A generator seeded by stable hashes of `keys` (never Python's randomized `hash`)."""
    return np.random.default_rng([zlib.crc32(str(key).encode()) for key in keys])


def crop(tile: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random `size` x `size` window of the last two axes of a larger tile, as a view."""
    oy, ox = rng.integers(0, tile.shape[-1] - size + 1, size=2)
    return tile[..., oy : oy + size, ox : ox + size]


def background(kind: str, rng: np.random.Generator, size: int) -> Background:
    """A random crop, rotated by a multiple of 90 degrees, of the cached tile of `kind`."""
    tile = _background_tile(kind, size)
    oy, ox = rng.integers(0, size + 1, size=2)
    turns = int(rng.integers(4))
    maps = (np.rot90(m[oy : oy + size, ox : ox + size], turns) for m in _maps(tile))
    return Background(*maps)


def _maps(tile: Background) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tile.texture, tile.height, tile.edges


@lru_cache(maxsize=32)
def _background_tile(kind: str, size: int) -> Background:
    rng = fixed_rng("background", kind, size)
    n = 2 * size
    builders = {"conveyor": _conveyor, "tray": _tray, "plain": _plain}
    return Background(*(_frozen(m) for m in _maps(builders[kind](rng, n, size))))


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.flags.writeable = False
    return array


def smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Bicubically upsampled uniform noise in about 0..1 with `cells` features per side."""
    small = rng.random((cells, cells), dtype=np.float32)
    image = Image.fromarray(small).resize((n, n), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.arange(n, dtype=np.float32)
    return axis[:, None], axis[None, :]


def _conveyor(rng: np.random.Generator, n: int, size: int) -> Background:
    y, x = _grid(n)
    period = size / rng.uniform(40, 70)
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / (1.7 * period))
    streaks = smooth_noise(rng, n, n // 3)[:1, :].repeat(n, axis=0)
    texture = 0.3 * weave + 0.3 * streaks + 0.25 * smooth_noise(rng, n, 8)
    texture += 0.15 * rng.random((n, n), dtype=np.float32)
    pitch = size * rng.uniform(0.15, 0.3)
    hinges = np.exp(-(((y % pitch) - pitch / 2) ** 2) / 3.0).repeat(n, axis=1)
    texture *= 1 - 0.3 * hinges
    return Background(texture, 0.15 * weave, hinges)


def _tray(rng: np.random.Generator, n: int, size: int) -> Background:
    y, x = _grid(n)
    pitch = size * 0.62
    wall, slope = size * 0.05, size * 0.035
    qx = np.abs(np.mod(x, pitch) - pitch / 2) - (pitch / 2 - wall)
    qy = np.abs(np.mod(y, pitch) - pitch / 2) - (pitch / 2 - wall)
    radius = size * 0.06
    qx, qy = qx + radius, qy + radius
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    sdf = outside + np.minimum(np.maximum(qx, qy), 0) - radius
    height = np.clip(1 + sdf / slope, 0, 1)
    edges = np.exp(-np.abs(sdf) / 1.5) + np.exp(-np.abs(sdf + slope) / 1.5)
    texture = 0.6 * smooth_noise(rng, n, 5) + 0.4 * rng.random((n, n), dtype=np.float32)
    return Background(texture, height, np.clip(edges, 0, 1))


def _plain(rng: np.random.Generator, n: int, size: int) -> Background:
    texture = 0.8 * smooth_noise(rng, n, 3) + 0.2 * rng.random((n, n), dtype=np.float32)
    zeros = np.zeros((n, n), np.float32)
    return Background(texture, zeros, zeros)


@lru_cache(maxsize=16)
def normal_tile(size: int, channels: int = 1) -> np.ndarray:
    """Standard normal noise, ([channels,] 2*size, 2*size) float32."""
    shape = ((channels,) if channels > 1 else ()) + (2 * size, 2 * size)
    return _frozen(fixed_rng("normal", size, channels).standard_normal(shape, dtype=np.float32))


@lru_cache(maxsize=16)
def uniform_tile(size: int) -> np.ndarray:
    """Uniform 0..1 noise, (2*size, 2*size) float32."""
    return _frozen(fixed_rng("uniform", size).random((2 * size, 2 * size), dtype=np.float32))


@lru_cache(maxsize=16)
def speckle_tile(size: int) -> np.ndarray:
    """Multiplicative laser speckle with mean 1, (2*size, 2*size) float32."""
    return _frozen(fixed_rng("speckle", size).gamma(9.0, 1 / 9.0, (2 * size, 2 * size)))


@lru_cache(maxsize=16)
def dust_tile(size: int) -> np.ndarray:
    """Sparse specks of dust, 0..1, (2*size, 2*size) float32."""
    rng = fixed_rng("dust", size)
    n = 2 * size
    image = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(n * n / 1500)):
        cx, cy = rng.uniform(0, n, size=2)
        r = rng.uniform(0.4, 1.8) * size / 256
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(90, 256)))
    return _frozen(np.asarray(image, dtype=np.float32) / 255)


@lru_cache(maxsize=1)
def local_tile() -> np.ndarray:
    """Smooth blobs, LOCAL_TILE sided, sampled in product coordinates (moves with the product)."""
    rng = fixed_rng("local")
    blobs = 0.7 * smooth_noise(rng, LOCAL_TILE, 24) + 0.3 * smooth_noise(rng, LOCAL_TILE, 64)
    return _frozen(blobs)


@lru_cache(maxsize=16)
def axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized pixel-centre coordinates in -1..1: a column (y) and a row (x)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    return _frozen(axis[:, None]), _frozen(axis[None, :])


@lru_cache(maxsize=16)
def radius2(size: int) -> np.ndarray:
    """Squared distance from the image centre, 0 at the centre and 1 at the mid-edges."""
    y, x = axes(size)
    return _frozen(x * x + y * y)
