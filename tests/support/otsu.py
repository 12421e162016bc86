"""A classical baseline the synthetic task must defeat (tests only): a global Otsu threshold."""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred, mask = pred.astype(bool), mask.astype(bool)
    union = np.count_nonzero(pred | mask)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & mask) / union


def otsu_iou(image: np.ndarray, mask: np.ndarray) -> float:
    """IoU of an Otsu threshold of the grey image, with whichever polarity scores better.

    Taking the better polarity with the ground truth in hand flatters the baseline on purpose.
    """
    from skimage.filters import threshold_otsu

    grey = image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if grey.min() == grey.max():
        return iou(np.zeros(mask.shape, bool), mask)
    bright = grey > threshold_otsu(grey)
    return max(iou(bright, mask), iou(~bright, mask))
