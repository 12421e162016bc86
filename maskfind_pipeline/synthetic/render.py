"""Render one synthetic factory image and its exact product mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskfind_pipeline.synthetic.cameras import CAMERA_MODELS
from maskfind_pipeline.synthetic.scene import build_scene
from maskfind_pipeline.synthetic.types import ImageType


@dataclass(frozen=True, eq=False)
class Sample:
    """A rendered image and its mask.

    Attributes:
        image: HxWx3 uint8 for `color2d`, HxW uint8 for the grayscale cameras.
        mask: HxW bool, True exactly on the product's pixels.
    """

    image: np.ndarray
    mask: np.ndarray


def render_sample(image_type: ImageType, rng: np.random.Generator, size: int = 256) -> Sample:
    """Render a random product of `image_type` as its camera would see it.

    Args:
        image_type: the camera, product, background and station to imitate.
        rng: the only source of randomness; the same generator state gives the same bytes.
        size: the side of the square image in pixels.
    """
    scene = build_scene(image_type.product, image_type.background, rng, size)
    image = CAMERA_MODELS[image_type.camera](scene, rng)
    return Sample(image, scene.mask)
