"""Training augmentation settings (torch-free, so run config classes can reuse them).

`data.loader.build_augmentation` turns them into a torchvision v2 transform applied to image and
mask together.
"""

from __future__ import annotations

from maskfind_pipeline.core_config import CoreConfig


class AugmentConfig(CoreConfig):
    """Training augmentation, applied jointly to image and mask (train split only)."""

    enabled: bool = True
    """Whether to augment at all."""
    flip_p: float = 0.5
    """Probability of each of a horizontal and a vertical flip."""
    rotate90: bool = True
    """Rotate by a random multiple of 90 degrees."""
    affine_p: float = 0.3
    """Probability of a small affine warp (degrees, translate, scale below)."""
    degrees: float = 10.0
    """The affine's maximal rotation in degrees."""
    translate: float = 0.05
    """The affine's maximal shift, as a fraction of the side."""
    scale: float = 0.1
    """The affine's maximal zoom in or out, as a fraction."""
    brightness: float = 0.2
    """Colour jitter on the image only, as in `v2.ColorJitter`."""
    contrast: float = 0.2
    """Contrast jitter, as in `v2.ColorJitter`."""
    saturation: float = 0.1
    """Saturation jitter, as in `v2.ColorJitter`."""
    hue: float = 0.0
    """Hue jitter, as in `v2.ColorJitter` (at most 0.5; costly, about 1.5 ms per 256² image)."""
