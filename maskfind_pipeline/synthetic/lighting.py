"""Lighting and sensor effects shared by the camera models (images are planar float32)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from maskfind_pipeline.synthetic.textures import axes, crop, normal_tile, radius2


def ramp(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A linear gradient 1 +/- `strength` across the frame in a random direction."""
    y, x = axes(size)
    angle = rng.uniform(0, 2 * np.pi)
    return (np.float32(strength * np.cos(angle)) * x + 1) + np.float32(strength * np.sin(angle)) * y


def illumination(
    rng: np.random.Generator, size: int, gradient: float, vignette: float
) -> np.ndarray:
    """A random gradient times a vignette, about 1 at the centre."""
    tilt = ramp(rng, size, rng.uniform(0, gradient))
    tilt *= 1 - rng.uniform(0, vignette) * radius2(size)
    return tilt


def add_glare(image: np.ndarray, rng: np.random.Generator, spots: int, peak: float) -> None:
    """Add up to `spots` separable Gaussian glare spots (each at most `peak`) in place."""
    y, x = axes(image.shape[-1])
    for _ in range(int(rng.integers(0, spots + 1))):
        cy, cx = (float(t) for t in rng.uniform(-1, 1, size=2))
        sigma2 = 2 * rng.uniform(0.05, 0.3) ** 2
        gy = np.exp(-((y - cy) ** 2) / sigma2) * np.float32(peak * rng.uniform(0.3, 1.0))
        image += gy * np.exp(-((x - cx) ** 2) / sigma2)


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> None:
    """Add Gaussian noise of standard deviation `sigma` (independent per plane) in place."""
    channels = image.shape[0] if image.ndim == 3 else 1
    image += crop(normal_tile(image.shape[-1], channels), rng, image.shape[-1]) * np.float32(sigma)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Clip 0..255 floats to bytes; planar (3, H, W) input becomes interleaved (H, W, 3)."""
    data = np.clip(image, 0, 255, out=image).astype(np.uint8)
    return np.stack(list(data), axis=-1) if data.ndim == 3 else data


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    """A box blur of a uint8 image (grey or RGB); radii below 1 weight the neighbours by it."""
    if radius <= 0.05:
        return image
    return np.asarray(Image.fromarray(image).filter(ImageFilter.BoxBlur(radius)))


def soft(mask: np.ndarray, radius: int) -> np.ndarray:
    """A box-blurred copy of a boolean mask as 0..1 floats."""
    image = Image.fromarray(mask.view(np.uint8) * np.uint8(255)).filter(ImageFilter.BoxBlur(radius))
    return np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
