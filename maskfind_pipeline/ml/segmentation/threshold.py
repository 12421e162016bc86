"""Tune the decision threshold on validation probabilities.

The curve (pixel precision, pixel recall and mean per-image IoU at every threshold of a grid)
is `metrics.summarize_group` of the library's pixel counts (`metrics.pixel_counts`) at each
threshold: one pass over the pixels per threshold, about 0.4 s for 225 images at 128² and 91
thresholds on 2 cores, once per training. Inputs and conventions follow `metrics` (float or
uint8 probabilities, p >= threshold = product, non-zero mask = product, empty sets score 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from maskfind_pipeline.ml.metrics import pixel_counts, summarize_group

Policy = Literal["max_iou", "min_recall"]
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))


@dataclass(frozen=True)
class ThresholdCurve:
    """Pixel precision, pixel recall and mean per-image IoU at each threshold (ascending)."""

    thresholds: list[float]
    precision: list[float]
    recall: list[float]
    mean_iou: list[float]


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold, the policy that chose it and the curve it was chosen from.

    Attributes:
        threshold: the chosen threshold.
        policy: "max_iou" or "min_recall".
        index: the chosen point's position in the curve.
        target_met: False when `min_recall` could not reach its recall at any threshold
            (the lowest threshold is chosen then).
        curve: the full curve, for plots and logs.
    """

    threshold: float
    policy: Policy
    index: int
    target_met: bool
    curve: ThresholdCurve

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def threshold_curve(
    probabilities: np.ndarray,
    masks: np.ndarray,
    thresholds: tuple[float, ...] | list[float] = DEFAULT_GRID,
) -> ThresholdCurve:
    """Pixel precision, pixel recall and mean per-image IoU at every threshold.

    Args:
        probabilities: (N, H, W) float in [0, 1] or uint8 quantised.
        masks: (N, H, W) ground truth, product where non-zero.
        thresholds: the grid, in any order (the curve is ascending, without repeats).

    Raises:
        ValueError: no images, or shapes that differ.
    """
    if probabilities.shape != masks.shape or probabilities.ndim != 3 or not len(masks):
        raise ValueError(
            f"expected equal (N>0, H, W) shapes, got {probabilities.shape}, {masks.shape}"
        )
    grid: list[float] = np.unique(np.asarray(thresholds, dtype=np.float64)).tolist()
    points = [summarize_group(pixel_counts(probabilities, masks, t)) for t in grid]
    return ThresholdCurve(
        thresholds=grid,
        precision=[p.precision for p in points],
        recall=[p.recall for p in points],
        mean_iou=[p.miou for p in points],
    )


def choose_threshold(
    curve: ThresholdCurve, policy: Policy, min_recall: float = 0.99
) -> ThresholdChoice:
    """Pick a point of `curve`.

    `max_iou`: the highest mean IoU; among equal ones, the threshold nearest 0.5.
    `min_recall`: the highest threshold whose pixel recall is at least `min_recall`
    (the lowest threshold, with `target_met=False`, if none is).
    """
    thresholds = np.asarray(curve.thresholds)
    if policy == "max_iou":
        ious = np.asarray(curve.mean_iou)
        best = np.flatnonzero(ious >= ious.max() - 1e-12)
        index = int(best[np.argmin(np.abs(thresholds[best] - 0.5))])
        return ThresholdChoice(float(thresholds[index]), policy, index, True, curve)
    if policy == "min_recall":
        enough = np.flatnonzero(np.asarray(curve.recall) >= min_recall)
        index = int(enough.max()) if enough.size else 0
        return ThresholdChoice(float(thresholds[index]), policy, index, bool(enough.size), curve)
    raise ValueError(f"unknown threshold policy {policy!r}; use 'max_iou' or 'min_recall'")


def tune_threshold(
    probabilities: np.ndarray,
    masks: np.ndarray,
    *,
    policy: Policy = "max_iou",
    min_recall: float = 0.99,
    thresholds: tuple[float, ...] | list[float] = DEFAULT_GRID,
) -> ThresholdChoice:
    """The threshold `policy` prefers on these validation probabilities (see `choose_threshold`)."""
    return choose_threshold(threshold_curve(probabilities, masks, thresholds), policy, min_recall)
