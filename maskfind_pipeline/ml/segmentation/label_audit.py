"""Label audit: training masks that a confident model contradicts are often wrong labels.

The model's verdict counts only where it is confident: pixels with probability at least
`confident` (product) or at most `1 - confident` (background). On those pixels the model's
decision is compared with the label (IoU); a label is suspect when that IoU is below `max_iou`,
the model is confident on at least `min_confident_share` of the image, and the pixels where the
two confidently disagree cover at least `min_disagreement` of it (an IoU of a tiny object, say
one cut by the image border, says little). Boundaries and
other pixels the model is unsure of take no part, so an honest label of a hard image is not
blamed for the model's doubt; mistakes of an unsure model are left to the reviewer and the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskfind_pipeline.ml.segmentation.config import AuditConfig


@dataclass(frozen=True)
class Audit:
    """Per image: IoU of the confident prediction with the label on the confident pixels,
    the share of confident pixels, and the verdict."""

    ious: np.ndarray
    confident_share: np.ndarray
    suspect: np.ndarray


def audit(probabilities: np.ndarray, labels: np.ndarray, config: AuditConfig) -> Audit:
    """Judge each label (N, H, W) against the model's probabilities (N, H, W), float in [0, 1]
    or uint8 in [0, 255].

    Raises:
        ValueError: the shapes differ.
    """
    if probabilities.shape != labels.shape:
        raise ValueError(f"shapes differ: {probabilities.shape} vs {labels.shape}")
    scale = 255.0 if probabilities.dtype == np.uint8 else 1.0
    p = probabilities.reshape(len(probabilities), -1).astype(np.float32) / scale
    label = labels.reshape(len(labels), -1).astype(bool)
    product, background = p >= config.confident, p <= 1.0 - config.confident
    sure = product | background
    overlap = (product & label).sum(axis=1)
    union = (product | (label & sure)).sum(axis=1)
    ious = np.where(union > 0, overlap / np.maximum(union, 1), 1.0)
    share = sure.mean(axis=1)
    disagreement = (sure & (product != label)).mean(axis=1)
    suspect = (
        (ious < config.max_iou)
        & (share >= config.min_confident_share)
        & (disagreement >= config.min_disagreement)
    )
    return Audit(ious.astype(np.float32), share.astype(np.float32), suspect)
