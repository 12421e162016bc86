"""Metrics, threshold tuning, plots and device selection on hand-made arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskfind_pipeline.ml.device import seed_everything
from maskfind_pipeline.ml.metrics import (
    evaluate,
    iou_per_image,
    pixel_counts,
    quantize_probabilities,
)
from maskfind_pipeline.ml.plots import (
    gallery_png,
    outline,
    pr_curve_png,
    select_gallery,
    training_curves_png,
)
from maskfind_pipeline.ml.segmentation.threshold import threshold_curve, tune_threshold

PNG = b"\x89PNG\r\n\x1a\n"


def square(top: int, left: int, side: int, size: int = 8) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def random_case(seed: int, count: int = 6, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = (rng.random((count, size, size)) < 0.3).astype(np.uint8)
    masks[0] = 0
    noise = rng.normal(0, 0.25, masks.shape)
    return np.clip(masks * 0.6 + 0.2 + noise, 0, 1).astype(np.float32), masks


def test_iou_precision_and_recall_of_a_known_overlap() -> None:
    truth = square(0, 0, 4)[None]
    probs = (square(2, 0, 4) * 0.9)[None].astype(np.float32)
    counts = pixel_counts(probs, truth, 0.5)
    assert (counts.tp[0], counts.fp[0], counts.fn[0]) == (8, 8, 8)
    assert iou_per_image(counts)[0] == pytest.approx(1 / 3)
    metrics = evaluate(probs, truth, 0.5, image_types=["a"], sources=["labeled"])
    assert metrics.overall.precision == pytest.approx(0.5)
    assert metrics.overall.recall == pytest.approx(0.5)


def test_empty_masks_follow_the_conventions() -> None:
    empty, full = np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32)
    probs = np.stack([empty, full, empty])
    masks = np.stack([empty, empty, full]).astype(np.uint8)
    ious = iou_per_image(pixel_counts(probs, masks, 0.5))
    np.testing.assert_array_equal(ious, [1.0, 0.0, 0.0])
    nothing = evaluate(probs[:1], masks[:1], 0.5, image_types=["a"], sources=["s"]).overall
    assert (nothing.miou, nothing.precision, nothing.recall) == (1.0, 1.0, 1.0)
    missed = evaluate(probs[2:], masks[2:], 0.5, image_types=["a"], sources=["s"]).overall
    assert (missed.precision, missed.recall) == (1.0, 0.0)


def test_groups_average_their_own_images() -> None:
    truth = np.stack([square(0, 0, 4), square(0, 0, 4), square(0, 0, 2)])
    probs = np.stack([square(0, 0, 4), square(2, 0, 4), np.zeros((8, 8))]).astype(np.float32)
    metrics = evaluate(
        probs, truth, 0.5, image_types=["a", "a", "b"], sources=["labeled", "failure", "labeled"]
    )
    assert metrics.overall.n_images == 3
    assert metrics.overall.miou == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert metrics.by_image_type["a"].miou == pytest.approx((1 + 1 / 3) / 2)
    assert metrics.by_image_type["b"].n_images == 1 and metrics.by_image_type["b"].miou == 0
    assert metrics.by_source["failure"].miou == pytest.approx(1 / 3)
    assert metrics.by_source["labeled"].recall == pytest.approx(16 / 20)
    rows = metrics.rows()
    assert [(r["group_kind"], r["group"]) for r in rows] == [
        ("overall", "overall"),
        ("image_type", "a"),
        ("image_type", "b"),
        ("source", "failure"),
        ("source", "labeled"),
    ]
    json.dumps(metrics.to_dict())
    assert metrics.flat("val_")["val_miou/image_type/a"] == pytest.approx((1 + 1 / 3) / 2)


def test_group_labels_must_match_the_images() -> None:
    probs, masks = random_case(0)
    with pytest.raises(ValueError, match="group labels"):
        evaluate(probs, masks, 0.5, image_types=["a"], sources=["s"] * len(masks))


def test_quantised_probabilities_give_the_same_counts() -> None:
    probs, masks = random_case(1)
    quantised = quantize_probabilities(probs)
    for threshold in (0.25, 0.5, 0.73):
        exact = pixel_counts(np.round(probs * 255) / 255, masks, threshold)
        coarse = pixel_counts(quantised, masks, threshold)
        np.testing.assert_array_equal(exact.tp, coarse.tp)
        np.testing.assert_array_equal(exact.fp, coarse.fp)


@pytest.mark.parametrize("quantised", [False, True], ids=["float", "uint8"])
def test_the_curve_equals_evaluating_every_threshold(quantised: bool) -> None:
    probs, masks = random_case(2)
    if quantised:
        probs = quantize_probabilities(probs)
    curve = threshold_curve(probs, masks)
    labels = ["t"] * len(masks)
    for i, threshold in enumerate(curve.thresholds):
        direct = evaluate(probs, masks, threshold, image_types=labels, sources=labels).overall
        point = (curve.mean_iou[i], curve.precision[i], curve.recall[i])
        assert point == (direct.miou, direct.precision, direct.recall)


def test_max_iou_picks_the_known_optimum() -> None:
    probs = np.zeros((1, 20, 10), np.float32)
    masks = np.zeros((1, 20, 10), np.uint8)
    masks[0, :10] = 1
    probs[0, :10] = 0.62
    probs[0, 10:15] = 0.55
    probs[0, 15:] = 0.70
    choice = tune_threshold(probs, masks)
    assert choice.threshold == pytest.approx(0.56)
    assert choice.curve.mean_iou[choice.index] == pytest.approx(100 / 150)
    assert max(choice.curve.mean_iou) == pytest.approx(100 / 150)


def test_min_recall_takes_the_highest_threshold_that_reaches_the_recall() -> None:
    probs, masks = random_case(3, count=10, size=32)
    choice = tune_threshold(probs, masks, policy="min_recall", min_recall=0.9)
    recall = np.asarray(choice.curve.recall)
    assert choice.target_met and recall[choice.index] >= 0.9 > recall[choice.index + 1]
    labels = ["t"] * len(masks)
    direct = evaluate(probs, masks, choice.threshold, image_types=labels, sources=labels)
    assert direct.overall.recall >= 0.9
    unreachable = tune_threshold(np.zeros_like(probs), masks, policy="min_recall")
    assert not unreachable.target_met and unreachable.threshold == pytest.approx(0.05)


def test_unknown_policy_and_empty_input_are_refused() -> None:
    probs, masks = random_case(4)
    with pytest.raises(ValueError, match="policy"):
        tune_threshold(probs, masks, policy="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="N>0"):
        threshold_curve(probs[:0], masks[:0])


def test_plots_are_png() -> None:
    probs, masks = random_case(5)
    choice = tune_threshold(probs, masks)
    assert pr_curve_png(choice).startswith(PNG)
    history = [{"epoch": 1, "train_loss": 1.0, "val_miou": 0.4}, {"epoch": 2, "train_loss": 0.5}]
    assert training_curves_png(history).startswith(PNG)
    images = np.zeros((len(masks), 16, 16, 3), np.uint8)
    labels = ["a", "a", "b", "b", "b", "c"]
    png = gallery_png(
        images, masks, probs, 0.5, labels=labels, captions=["IoU 0.5"] * 6, max_columns=2
    )
    assert png.startswith(PNG)


def test_gallery_selection_spans_worst_to_best_per_type() -> None:
    ious = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.2])
    picked = select_gallery(["a", "a", "a", "a", "b", "b"], ious, per_type=2)
    assert picked == [1, 0, 5, 4]
    assert select_gallery(["a", "b", "c"], np.array([0.9, 0.1, 0.5]), max_types=2) == [1, 2]


def test_outline_is_the_mask_border() -> None:
    edge = outline(square(2, 2, 4).astype(bool))
    assert edge.sum() == 12 and not edge[3:5, 3:5].any()


def test_seeding_repeats_draws() -> None:
    seed_everything(7)
    first = (torch.rand(3), np.random.rand(3))
    seed_everything(7)
    again = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
