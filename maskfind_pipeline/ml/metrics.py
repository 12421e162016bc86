"""Mask metrics at a threshold: per-image IoU, pixel precision and recall, grouped summaries.

Probabilities are (N, H, W) arrays, either float in [0, 1] or uint8 quantised as
round(p * 255) (`quantize_probabilities`); a pixel is predicted product when p >= threshold.
Masks are (N, H, W) arrays, product where non-zero. Everything returned is plain Python
(JSON-able via `to_dict`). Conventions for empty sets: an image with no product and no
predicted product has IoU 1; precision with nothing predicted and recall with nothing to find
are 1 (nothing went wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

OVERALL = "overall"
_CHUNK_PIXELS = 1 << 24


@dataclass(frozen=True)
class PixelCounts:
    """True positive, false positive and false negative pixels per image, each shape (N,)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    def take(self, selection: np.ndarray) -> PixelCounts:
        return PixelCounts(self.tp[selection], self.fp[selection], self.fn[selection])


@dataclass(frozen=True)
class GroupMetrics:
    """Summary of a group of images: mean per-image IoU, pixel precision and recall, count."""

    miou: float
    precision: float
    recall: float
    n_images: int


@dataclass(frozen=True)
class EvaluationMetrics:
    """Metrics at one threshold, overall and per image type and per source."""

    threshold: float
    overall: GroupMetrics
    by_image_type: dict[str, GroupMetrics]
    by_source: dict[str, GroupMetrics]

    def rows(self) -> list[dict[str, object]]:
        """One dict per group: group_kind (overall/image_type/source), group and the metrics."""
        rows: list[dict[str, object]] = [{"group_kind": OVERALL, "group": OVERALL}]
        rows[0].update(asdict(self.overall))
        for kind, groups in (("image_type", self.by_image_type), ("source", self.by_source)):
            for name, metrics in sorted(groups.items()):
                rows.append({"group_kind": kind, "group": name, **asdict(metrics)})
        return rows

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Scalars for a metrics log: `miou`, `precision`, `recall`, `miou/<type>`, ..."""
        out = {f"{prefix}{k}": float(v) for k, v in asdict(self.overall).items()}
        out[f"{prefix}threshold"] = self.threshold
        for kind, groups in (("image_type", self.by_image_type), ("source", self.by_source)):
            for name, metrics in groups.items():
                out[f"{prefix}miou/{kind}/{name}"] = metrics.miou
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def quantize_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] as uint8 round(p * 255)."""
    return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)


def probability_scale(probabilities: np.ndarray) -> float:
    """255 for uint8-quantised probabilities, else 1."""
    return 255.0 if probabilities.dtype == np.uint8 else 1.0


def pixel_counts(probabilities: np.ndarray, masks: np.ndarray, threshold: float) -> PixelCounts:
    """Per-image confusion counts of `probabilities >= threshold` against `masks`."""
    if probabilities.shape != masks.shape or probabilities.ndim != 3:
        raise ValueError(
            f"expected equal (N, H, W) shapes, got {probabilities.shape}, {masks.shape}"
        )
    cut = threshold * probability_scale(probabilities)
    count, pixels = probabilities.shape[0], int(np.prod(probabilities.shape[1:]))
    tp, fp, fn = (np.zeros(count, np.int64) for _ in range(3))
    step = max(1, _CHUNK_PIXELS // max(pixels, 1))
    for start in range(0, count, step):
        part = slice(start, start + step)
        pred = probabilities[part].reshape(-1, pixels) >= cut
        truth = masks[part].reshape(-1, pixels) != 0
        tp[part] = np.count_nonzero(pred & truth, axis=1)
        fp[part] = np.count_nonzero(pred & ~truth, axis=1)
        fn[part] = np.count_nonzero(~pred & truth, axis=1)
    return PixelCounts(tp, fp, fn)


def iou_per_image(counts: PixelCounts) -> np.ndarray:
    """IoU of each image, 1.0 where both prediction and ground truth are empty."""
    union = counts.tp + counts.fp + counts.fn
    return np.where(union > 0, counts.tp / np.maximum(union, 1), 1.0)


def summarize_group(counts: PixelCounts) -> GroupMetrics:
    """Mean IoU and micro-averaged (pixel) precision and recall of a group of images."""
    tp, fp, fn = (int(a.sum()) for a in (counts.tp, counts.fp, counts.fn))
    ious = iou_per_image(counts)
    return GroupMetrics(
        miou=float(ious.mean()) if ious.size else float("nan"),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        n_images=int(ious.size),
    )


def summarize(
    counts: PixelCounts,
    threshold: float,
    *,
    image_types: Sequence[str],
    sources: Sequence[str],
) -> EvaluationMetrics:
    """Group per-image counts overall, by image type and by source.

    Args:
        counts: per-image counts, row i describing image i.
        threshold: the threshold the counts were taken at (recorded only).
        image_types: the image type of each image.
        sources: the source (labeled / failure) of each image.
    """
    return EvaluationMetrics(
        threshold=float(threshold),
        overall=summarize_group(counts),
        by_image_type=_by_group(counts, image_types),
        by_source=_by_group(counts, sources),
    )


def evaluate(
    probabilities: np.ndarray,
    masks: np.ndarray,
    threshold: float,
    *,
    image_types: Sequence[str],
    sources: Sequence[str],
) -> EvaluationMetrics:
    """Metrics of `probabilities >= threshold` against `masks`, overall and per group.

    Args:
        probabilities: (N, H, W) float in [0, 1] or uint8 quantised.
        masks: (N, H, W) ground truth, product where non-zero.
        threshold: the decision threshold in [0, 1].
        image_types: the image type of each image.
        sources: the source of each image.
    """
    counts = pixel_counts(probabilities, masks, threshold)
    return summarize(counts, threshold, image_types=image_types, sources=sources)


def _by_group(counts: PixelCounts, labels: Sequence[str]) -> dict[str, GroupMetrics]:
    names = np.asarray(labels, dtype=object)
    if names.shape != counts.tp.shape:
        raise ValueError(f"{names.size} group labels for {counts.tp.size} images")
    return {str(n): summarize_group(counts.take(names == n)) for n in sorted(set(names.tolist()))}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0
