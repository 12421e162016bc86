"""Camera models: turn a scene into the bytes a colour, laser, X-ray or dark-field camera sees."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maskfind_pipeline.synthetic.lighting import (
    add_glare,
    add_noise,
    blur,
    illumination,
    ramp,
    soft,
    to_uint8,
)
from maskfind_pipeline.synthetic.scene import Scene, shift
from maskfind_pipeline.synthetic.textures import (
    crop,
    dust_tile,
    normal_tile,
    speckle_tile,
    uniform_tile,
)

_BACKGROUND_RGB = {
    "conveyor": [
        (0.18, 0.19, 0.2),
        (0.3, 0.4, 0.32),
        (0.7, 0.7, 0.66),
        (0.22, 0.28, 0.42),
        (0.38, 0.26, 0.17),
    ],
    "tray": [
        (0.85, 0.84, 0.8),
        (0.1, 0.1, 0.1),
        (0.55, 0.42, 0.2),
        (0.33, 0.2, 0.12),
        (0.62, 0.55, 0.32),
    ],
    "plain": [
        (0.5, 0.5, 0.5),
        (0.9, 0.9, 0.88),
        (0.14, 0.14, 0.16),
        (0.45, 0.3, 0.2),
        (0.3, 0.35, 0.45),
    ],
}
_CHOCOLATE_RGB = [(0.13, 0.08, 0.06), (0.25, 0.15, 0.09), (0.42, 0.27, 0.16), (0.85, 0.78, 0.62)]
_MIX = {"choc_bar": 0.3, "rounded_bar": 0.3, "praline": 1.0, "wafer": 1.0}

Camera = Callable[[Scene, np.random.Generator], np.ndarray]


def _colour(rng: np.random.Generator, palette: list[tuple[float, float, float]]) -> np.ndarray:
    base = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float32)
    return base * rng.uniform(0.8, 1.2, size=3).astype(np.float32)


def _product_colours(rng: np.random.Generator, product: str) -> tuple[np.ndarray, np.ndarray]:
    if product == "wafer":
        return rng.random(3).astype(np.float32) * 0.8 + 0.1, rng.random(3).astype(np.float32)
    main = _colour(rng, _CHOCOLATE_RGB)
    if product == "praline":
        return main, _colour(rng, _CHOCOLATE_RGB)
    return main, np.minimum(main * 1.4, 1)


def _slope_shade(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Lambert-like shading from the height field's gradient under a random light direction."""
    h = scene.fields.height
    gx, gy = np.zeros_like(h), np.zeros_like(h)
    gx[:, 1:-1] = h[:, 2:] - h[:, :-2]
    gy[1:-1, :] = h[2:, :] - h[:-2, :]
    angle = rng.uniform(0, 2 * np.pi)
    k = scene.fields.relief * 0.75
    slope = (gx * np.float32(np.cos(angle) * k)) + (gy * np.float32(np.sin(angle) * k))
    return 0.85 + np.clip(slope, -0.45, 0.45)


def _product_rgb(scene: Scene, rng: np.random.Generator, cast: np.ndarray) -> np.ndarray:
    f = scene.fields
    main, second = (c * cast for c in _product_colours(rng, scene.product))
    mix = f.pattern * np.float32(_MIX[scene.product])
    lum = _slope_shade(scene, rng) * (1 - 0.6 * f.groove)
    h2 = f.height * f.height
    spec = h2 * h2 * h2 * np.float32(255 * rng.uniform(0, 0.35))
    rgb = main[:, None, None] + mix * (second - main)[:, None, None]
    rgb *= lum
    rgb += spec
    return rgb


def color2d(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """An RGB camera under uneven light: shadow, colour cast, glare, dust, noise, blur."""
    size, bg = scene.size, scene.background
    lum = 0.55 + (bg.texture - 0.5) * rng.uniform(0.4, 1.0) + 0.3 * bg.height - 0.4 * bg.edges
    dy, dx = (int(t) for t in rng.integers(-6, 7, size=2) * size // 256)
    lum *= 1 - rng.uniform(0.1, 0.5) * soft(shift(scene.mask, dy, dx), max(1, size // 64))
    cast = rng.uniform(0.85, 1.15, size=3).astype(np.float32) * 255
    image = (_colour(rng, _BACKGROUND_RGB[scene.kind]) * cast)[:, None, None] * lum
    window = image[:, scene.window[0], scene.window[1]]
    window[...] = np.where(scene.inside, _product_rgb(scene, rng, cast), window)
    light = illumination(rng, size, 0.4, 0.5)
    light *= 1 - crop(dust_tile(size), rng, size) * np.float32(0.7 * rng.uniform(0, 1))
    image *= light
    add_glare(image, rng, 2, 255)
    add_noise(image, rng, 255 * rng.uniform(0.005, 0.04))
    return blur(to_uint8(image), rng.uniform(0, 1.2) if rng.random() < 0.6 else 0)


_LASER_FLOOR = {"conveyor": (0.1, 0.1), "tray": (0.04, 0.5), "plain": (0.08, 0.0)}


def laser3d(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A laser triangulation height map: brighter is higher, with speckle and missing data."""
    size, bg, f = scene.size, scene.background, scene.fields
    floor, relief = _LASER_FLOOR[scene.kind]
    z = floor + relief * bg.height + 0.03 * bg.texture
    window = z[scene.window]
    lift = rng.uniform(0.2, 0.55) * (0.08 + f.height * (1 - 0.4 * f.groove))
    window[...] = np.where(scene.inside, window + lift, window)
    z = (z + rng.uniform(-0.1, 0.1)) * ramp(rng, size, rng.uniform(0, 0.5))
    image = (12.75 + 229.5 * z) * crop(speckle_tile(size), rng, size)
    add_noise(image, rng, 2.5)
    return _drop_data(scene, rng, to_uint8(image))


def _drop_data(scene: Scene, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = scene.size
    missing = crop(uniform_tile(size), rng, size) < rng.uniform(0.002, 0.03)
    step = int(rng.integers(2, 9)) * size // 256 * (1 if rng.random() < 0.5 else -1)
    missing |= shift(scene.mask, 0, step) & ~scene.mask
    steep = np.abs(scene.fields.sdf) < 1.5
    missing[scene.window] |= steep & (crop(uniform_tile(size), rng, size)[scene.window] < 0.5)
    for row in rng.integers(0, size, size=int(rng.integers(0, 4))):
        missing[row : row + int(rng.integers(1, 4)), :] = True
    image[missing] = 0
    return image


_XRAY_BACKGROUND = {
    "conveyor": (0.15, 0.1, 0.4),
    "tray": (0.1, 0.25, 0.8),
    "plain": (0.0, 0.0, 0.0),
}


def xray(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A radiograph: transmission through belt/tray and product, beam hardening, heel effect."""
    size, bg, f = scene.size, scene.background, scene.fields
    base, by_height, by_edges = _XRAY_BACKGROUND[scene.kind]
    thickness = base + by_height * bg.height + by_edges * bg.edges + 0.05 * bg.texture
    window = thickness[scene.window]
    product = rng.uniform(0.6, 2.0) * (0.12 + 0.88 * f.height) * f.density
    window[...] = np.where(scene.inside, window + product, window)
    hardening = rng.uniform(0.1, 0.6)
    transmission = np.exp(-thickness / (1 + hardening * thickness))
    image = 10 + 235 * ramp(rng, size, rng.uniform(0.05, 0.3)) * transmission
    quantum = np.sqrt(image) * crop(normal_tile(size), rng, size)
    image += quantum * np.float32(rng.uniform(0.1, 0.5))
    return blur(to_uint8(image), rng.uniform(0.4, 1.2))


def darkfield(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Dark-field light: a dark scene where only edges (rims, tray lips, grooves) and dust glow."""
    size, bg = scene.size, scene.background
    image = 0.03 + 0.05 * bg.texture + rng.uniform(0.2, 0.7) * bg.edges
    if scene.kind == "conveyor":
        image += 0.5 * np.clip((bg.texture - 0.75) * 4, 0, 1)
    window = image[scene.window]
    window[...] = np.where(scene.inside, _darkfield_product(scene, rng), window)
    image *= illumination(rng, size, 0.3, 0.4) * np.float32(255 * rng.uniform(0.8, 1.5))
    image += crop(dust_tile(size), rng, size) * np.float32(255 * rng.uniform(0.4, 1.0))
    add_noise(image, rng, 255 * rng.uniform(0.01, 0.03))
    return blur(to_uint8(image), rng.uniform(0, 0.8))


def _darkfield_product(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    f = scene.fields
    a, b = scene.extent
    angle = rng.uniform(0, 2 * np.pi)
    facing = (scene.u * np.float32(np.cos(angle) / a)) + (scene.v * np.float32(np.sin(angle) / b))
    light = np.clip(0.55 + 0.45 * facing, 0.15, 1)
    rim = np.exp(np.minimum(f.sdf, 0) * np.float32(1 / rng.uniform(1.0, 3.0))) * light
    amplitude = rng.uniform(0.5, 0.9)
    return rng.uniform(0.04, 0.12) + 0.06 * f.pattern + amplitude * (rim + 0.4 * f.groove)


CAMERA_MODELS: dict[str, Camera] = {
    "color2d": color2d,
    "laser3d": laser3d,
    "xray": xray,
    "darkfield": darkfield,
}
