"""Metrics and the threshold curve against scikit-learn on random masks and probabilities.

The reference binarises with the documented rule (p >= threshold, uint8 p on the 0-255 scale;
mask product where non-zero) and lets scikit-learn score it, with zero_division=1.0 for the
empty-set convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import jaccard_score, precision_score, recall_score

from maskfind_pipeline.ml.metrics import (
    evaluate,
    iou_per_image,
    pixel_counts,
    quantize_probabilities,
)
from maskfind_pipeline.ml.segmentation.threshold import threshold_curve

SEEDS = range(6)
THRESHOLDS = (0.0, 0.05, 0.37, 0.5, 0.57, 0.9, 1.0, 1.2)
TYPES = ("a", "b", "c")
SOURCES = ("labeled", "failure")
EMPTY_SCORES_ONE: dict[str, Any] = {"zero_division": 1.0}


def close(expected: object) -> Any:
    """Equal up to floating-point rounding (summation order)."""
    return pytest.approx(expected, rel=1e-12, abs=1e-15)


def random_case(seed: int, quantised: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and masks with empty and full masks and predictions among random ones."""
    rng = np.random.default_rng(seed)
    count, height, width = 12, int(rng.integers(3, 24)), int(rng.integers(3, 24))
    density = rng.random((count, 1, 1))
    masks = (rng.random((count, height, width)) < density).astype(np.uint8)
    masks[seed % 3 :: 4] *= 255  # non-zero, not only 1, is product
    masks[0] = masks[1] = 0
    masks[2] = masks[6] = 1
    probs = np.clip(0.5 * masks.astype(bool) + rng.normal(0.25, 0.3, masks.shape), 0, 1)
    probs = probs.astype(np.float32 if seed % 2 else np.float64)
    probs[1] = probs[2] = probs[3] = 0.0  # empty predictions, for empty, full and random masks
    probs[4] = 1.0  # a full prediction
    probs[5, :, : width // 2] = 0.5  # exactly on a threshold
    # On a threshold as float32 rounds it (down, for both): float32 0.57 reaches 0.57.
    probs[7, :, : width // 2] = 0.57
    probs[8, :, : width // 2] = 0.9
    return (quantize_probabilities(probs) if quantised else probs), masks


def predicted(probs: np.ndarray, threshold: float) -> np.ndarray:
    scale = 255 if probs.dtype == np.uint8 else 1
    return probs >= threshold * scale


def sklearn_ious(probs: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    pairs = zip(masks != 0, predicted(probs, threshold), strict=True)
    return np.array([jaccard_score(t.ravel(), p.ravel(), **EMPTY_SCORES_ONE) for t, p in pairs])


def sklearn_group(
    probs: np.ndarray, masks: np.ndarray, threshold: float, ious: np.ndarray, selection: np.ndarray
) -> tuple[float, float, float]:
    """Mean per-image IoU (of `ious`), pixel precision and pixel recall of the selection."""
    pred, truth = predicted(probs, threshold)[selection].ravel(), masks[selection].ravel() != 0
    return (
        float(ious[selection].mean()),
        float(precision_score(truth, pred, **EMPTY_SCORES_ONE)),
        float(recall_score(truth, pred, **EMPTY_SCORES_ONE)),
    )


def labels(seed: int, names: Sequence[str], count: int) -> list[str]:
    return np.random.default_rng(seed + 100).choice(names, count).tolist()


CASES = [(seed, quantised) for seed in SEEDS for quantised in (False, True)]
IDS = [f"seed{seed}-{'uint8' if quantised else 'float'}" for seed, quantised in CASES]


@pytest.mark.parametrize(("seed", "quantised"), CASES, ids=IDS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_per_image_iou_is_sklearns_jaccard(seed: int, quantised: bool, threshold: float) -> None:
    probs, masks = random_case(seed, quantised)
    ious = iou_per_image(pixel_counts(probs, masks, threshold))
    assert ious == close(sklearn_ious(probs, masks, threshold))


@pytest.mark.parametrize(("seed", "quantised"), CASES, ids=IDS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_groups_match_sklearn(seed: int, quantised: bool, threshold: float) -> None:
    probs, masks = random_case(seed, quantised)
    types, sources = labels(seed, TYPES, len(masks)), labels(seed + 1, SOURCES, len(masks))
    metrics = evaluate(probs, masks, threshold, image_types=types, sources=sources)
    groups = [(metrics.overall, np.ones(len(masks), bool))]
    for found, names in ((metrics.by_image_type, types), (metrics.by_source, sources)):
        assert sorted(found) == sorted(set(names))
        groups += [(found[name], np.asarray(names) == name) for name in found]
    ious = sklearn_ious(probs, masks, threshold)
    for group, selection in groups:
        miou, precision, recall = sklearn_group(probs, masks, threshold, ious, selection)
        assert group.n_images == selection.sum()
        assert group.miou == close(miou)
        assert group.precision == close(precision)
        assert group.recall == close(recall)


@pytest.mark.parametrize(("seed", "quantised"), CASES, ids=IDS)
def test_the_curve_matches_sklearn(seed: int, quantised: bool) -> None:
    probs, masks = random_case(seed, quantised)
    curve = threshold_curve(probs, masks, [0.9, 0.05, 0.5, 0.57, 0.37, 0.5, 0.2])
    assert curve.thresholds == [0.05, 0.2, 0.37, 0.5, 0.57, 0.9]
    everything = np.ones(len(masks), bool)
    for i, threshold in enumerate(curve.thresholds):
        ious = sklearn_ious(probs, masks, threshold)
        miou, precision, recall = sklearn_group(probs, masks, threshold, ious, everything)
        assert curve.mean_iou[i] == close(miou)
        assert curve.precision[i] == close(precision)
        assert curve.recall[i] == close(recall)


def test_the_cases_cover_the_empty_conventions() -> None:
    """Every empty and full combination is in the cases, so the tests above exercise them."""
    for quantised in (False, True):
        probs, masks = random_case(0, quantised)
        pred, truth = predicted(probs, 0.5), masks != 0
        seen = {(p.any(), p.all(), t.any(), t.all()) for p, t in zip(pred, truth, strict=True)}
        nothing, everything, some = (False, False), (True, True), (True, False)
        for combination in [
            (*nothing, *nothing),
            (*nothing, *everything),
            (*nothing, *some),
            (*everything, *some),
            (*some, *nothing),
            (*some, *everything),
            (*some, *some),
        ]:
            assert combination in seen, combination
        assert (masks == 255).any()
