"""Tune the decision threshold on validation probabilities.

Every threshold of a grid is evaluated in one pass over the pixels: each pixel is binned by how
many grid thresholds it reaches, per image and per ground-truth class, and cumulative sums of
those histograms give each image's true and false positives at every threshold at once. Work is
O(pixels + images x grid), not O(pixels x grid). Inputs follow `metrics` (float or uint8
probabilities, non-zero mask = product, p >= threshold = product).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from maskfind_pipeline.ml.metrics import probability_scale

Policy = Literal["max_iou", "min_recall"]
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))
_CHUNK_PIXELS = 1 << 24


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
    """Precision, recall and mean IoU at every threshold, in one pass over the pixels.

    Args:
        probabilities: (N, H, W) float in [0, 1] or uint8 quantised.
        masks: (N, H, W) ground truth, product where non-zero.
        thresholds: the grid, in any order (the curve is ascending).

    Raises:
        ValueError: no images, or shapes that differ.
    """
    if probabilities.shape != masks.shape or probabilities.ndim != 3 or not len(masks):
        raise ValueError(
            f"expected equal (N>0, H, W) shapes, got {probabilities.shape}, {masks.shape}"
        )
    grid = np.unique(np.asarray(thresholds, dtype=np.float64))
    positive, negative = _histograms(probabilities, masks, grid)
    tp = _reached(positive)
    fp = _reached(negative)
    fn = positive.sum(axis=1, keepdims=True) - tp
    union = tp + fp + fn
    iou = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
    tp_sum, fp_sum, fn_sum = tp.sum(axis=0), fp.sum(axis=0), fn.sum(axis=0)
    return ThresholdCurve(
        thresholds=grid.tolist(),
        precision=_safe_ratio(tp_sum, tp_sum + fp_sum).tolist(),
        recall=_safe_ratio(tp_sum, tp_sum + fn_sum).tolist(),
        mean_iou=iou.mean(axis=0).tolist(),
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


def _histograms(
    probabilities: np.ndarray, masks: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, pixel counts by bucket b = how many grid thresholds p reaches, for GT 1 and 0."""
    cuts = grid * probability_scale(probabilities)
    lut = (
        np.searchsorted(cuts, np.arange(256), side="right")
        if probabilities.dtype == np.uint8
        else None
    )
    count, pixels, width = len(masks), int(np.prod(masks.shape[1:])), len(grid) + 1
    positive = np.zeros((count, width), np.int64)
    negative = np.zeros((count, width), np.int64)
    step = max(1, _CHUNK_PIXELS // max(pixels, 1))
    for start in range(0, count, step):
        probs = probabilities[start : start + step].reshape(-1, pixels)
        buckets = lut[probs] if lut is not None else np.searchsorted(cuts, probs, side="right")
        rows = len(probs)
        flat = (buckets + width * np.arange(rows)[:, None]).ravel()
        truth = (masks[start : start + step].reshape(-1, pixels) != 0).ravel()
        size = rows * width
        positive[start : start + rows] = np.bincount(flat[truth], minlength=size).reshape(
            rows, width
        )
        negative[start : start + rows] = np.bincount(flat[~truth], minlength=size).reshape(
            rows, width
        )
    return positive, negative


def _reached(histogram: np.ndarray) -> np.ndarray:
    """(N, G): pixels at or above each threshold j, i.e. in buckets j+1 and beyond."""
    tail = np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]
    return tail[:, 1:]


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 1.0)
