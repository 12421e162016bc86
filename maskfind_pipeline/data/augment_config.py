"""Training augmentation settings (torch-free, so run config classes can reuse them).

Two implementations draw the same transforms: `data.loader.build_augmentation`, a torchvision v2
transform applied to each sample in the loader, and `ml.segmentation.batch_augment.BatchAugment`,
applied to whole batches on the training device by the training loop. `where` picks one.
"""

from __future__ import annotations

from typing import Literal

from maskfind_pipeline.core_config import CoreConfig


class AugmentConfig(CoreConfig):
    """Training augmentation, applied jointly to image and mask (train split only)."""

    enabled: bool = True
    """Whether to augment at all."""
    where: Literal["auto", "sample", "batch"] = "auto"
    """`sample`: per sample in the loader's workers (torchvision v2); `batch`: whole batches on
    the training device after the copy (`ml.segmentation.batch_augment`); `auto`: batch on a GPU,
    per sample on the CPU."""
    flip_p: float = 0.5
    """Probability of a horizontal flip, and of a vertical one unless `vflip_p` is set."""
    vflip_p: float | None = None
    """Probability of a vertical flip (0 for photographs with a natural up); null: `flip_p`."""
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

    @property
    def vertical_flip_p(self) -> float:
        """The probability of a vertical flip."""
        return self.flip_p if self.vflip_p is None else self.vflip_p

    def on_device(self, device_type: str) -> bool:
        """Whether training on a `device_type` ("cuda", "cpu", ...) augments whole batches there."""
        if not self.enabled:
            return False
        if self.where == "auto":
            return device_type != "cpu"
        return self.where == "batch"
