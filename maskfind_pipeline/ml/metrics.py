"""Mask metrics: per-image IoU, pixel precision and recall, grouped summaries.

Pixel counting and scores come from segmentation-models-pytorch (`smp.metrics.get_stats`,
`iou_score`, `precision`, `recall`); this module adds what is ours: the threshold rule,
grouping by image type and source, and plain-Python results (JSON-able via `to_dict`).

Conventions: probabilities are (N, H, W) arrays, either float in [0, 1] or uint8 quantised as
round(p * 255) (`quantize_probabilities`); a pixel is predicted product when p >= threshold.
Masks are (N, H, W) arrays, product where non-zero. Empty sets score 1 (smp's
`zero_division=1.0`): an image with no product and no predicted product has IoU 1; precision
with nothing predicted and recall with nothing to find are 1 (nothing went wrong).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch

OVERALL = "overall"
ZERO_DIVISION = 1.0
_CHUNK_PIXELS = 1 << 20
"""Pixels per library call: small enough that its boolean sums stay in cache."""

_Score = Callable[..., torch.Tensor]


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


def predicted_masks(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (N, H, W) `probabilities >= threshold`, by the rule of `predicted`."""
    return predicted(_tensor(probabilities), threshold).numpy()


def predicted(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean `probabilities >= threshold`.

    Float probabilities are compared in their own precision (the threshold rounded to it, so
    float32 0.7 reaches 0.7). uint8 ones are compared with the integer ceil(threshold * 255):
    exact, and free of uint8 wrap-around for cuts outside 0..255.
    """
    if probabilities.dtype != torch.uint8:
        return probabilities >= float(threshold)
    cut = math.ceil(threshold * 255.0)
    if cut > 255:
        return torch.zeros_like(probabilities, dtype=torch.bool)
    return probabilities >= max(cut, 0)


def pixel_counts(probabilities: np.ndarray, masks: np.ndarray, threshold: float) -> PixelCounts:
    """Per-image confusion counts of `probabilities >= threshold` against `masks`.

    Raises:
        ValueError: shapes that differ or are not (N, H, W).
    """
    tp, fp, fn = (np.zeros(len(masks), np.int64) for _ in range(3))
    for part, probs, product in _chunks(probabilities, masks):
        pred = predicted(probs, threshold)
        stats = smp.metrics.get_stats(pred[:, None], product[:, None], mode="binary")  # pyright: ignore[reportArgumentType]
        tp[part], fp[part], fn[part] = (s[:, 0].numpy() for s in stats[:3])
    return PixelCounts(tp, fp, fn)


def iou_per_image(counts: PixelCounts) -> np.ndarray:
    """IoU of each image, 1.0 where both prediction and ground truth are empty."""
    return _score(smp.metrics.iou_score, counts).numpy()


def summarize_group(counts: PixelCounts) -> GroupMetrics:
    """Mean IoU and micro-averaged (pixel) precision and recall of a group of images."""
    ious = iou_per_image(counts)
    return GroupMetrics(
        miou=float(ious.mean()) if ious.size else float("nan"),
        precision=_score(smp.metrics.precision, counts, total=True).item(),
        recall=_score(smp.metrics.recall, counts, total=True).item(),
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


def _score(metric: _Score, counts: PixelCounts, *, total: bool = False) -> torch.Tensor:
    """An `smp.metrics` score of each image, or of all pixels together with `total`, in float64."""
    tp, fp, fn = (
        torch.from_numpy(np.asarray(a, np.float64)) for a in (counts.tp, counts.fp, counts.fn)
    )
    if total:
        tp, fp, fn = (c.sum(dim=0, keepdim=True) for c in (tp, fp, fn))
    # Precision, recall and IoU do not use the true negatives.
    return metric(tp, fp, fn, torch.zeros_like(tp), reduction="none", zero_division=ZERO_DIVISION)


def _chunks(
    probabilities: np.ndarray, masks: np.ndarray
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """(images, their probabilities, where they are product) in chunks of `_CHUNK_PIXELS`."""
    if probabilities.shape != masks.shape or probabilities.ndim != 3:
        raise ValueError(
            f"expected equal (N, H, W) shapes, got {probabilities.shape}, {masks.shape}"
        )
    probs, truth = _tensor(probabilities), _tensor(masks)
    step = max(1, _CHUNK_PIXELS // max(int(np.prod(masks.shape[1:])), 1))
    for start in range(0, len(masks), step):
        part = slice(start, start + step)
        yield part, probs[part], truth[part] != 0


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory (copied only if not C-contiguous); read, never written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))
