"""Grades, degraded masks and the reviewer's samples: IoUs, masks and baselines as claimed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfind_pipeline import synthetic
from maskfind_pipeline.ml.reviewer.config import GradeRule
from maskfind_pipeline.ml.reviewer.data import (
    build_review_samples,
    mask_ious,
    mean_entropy,
    split_by_type,
)
from maskfind_pipeline.ml.reviewer.degrade import DEGRADATIONS, degrade, iou, soft_map
from maskfind_pipeline.ml.reviewer.model import binary_mask
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.predict import Predictor

SIZE = 32


class BrightPixels(Predictor):
    """A stand-in mask model: product where the image is bright (mirror-symmetric)."""

    def logits(self, images: torch.Tensor, *, tta: bool = True) -> torch.Tensor:
        return (images.float().mean(dim=1, keepdim=True) - 128.0) / 8.0


class LeftHalf(Predictor):
    """A stand-in mask model that always marks the left half: the worst flip agreement."""

    def logits(self, images: torch.Tensor, *, tta: bool = True) -> torch.Tensor:
        out = torch.full((images.shape[0], 1, *images.shape[2:]), -5.0)
        out[..., : images.shape[-1] // 2] = 5.0
        return out


def stand_in(cls: type[Predictor], threshold: float = 0.5, name: str = "") -> Predictor:
    config = ModelConfig(encoder_weights=None, input_size=SIZE, threshold=threshold)
    return cls(torch.nn.Identity(), config, version=name)


def squares(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bright squares on a dark ground: images (N, S, S, 3), true masks, two image types."""
    rng = np.random.default_rng(seed)
    images = np.full((count, SIZE, SIZE, 3), 30, np.uint8)
    masks = np.zeros((count, SIZE, SIZE), bool)
    for i in range(count):
        side = int(rng.integers(10, 18))
        row, col = rng.integers(0, SIZE - side, size=2)
        masks[i, row : row + side, col : col + side] = True
    images[masks] = 220
    return images, masks, np.array(["a", "b"] * (count // 2) + ["a"] * (count % 2), object)


def test_grades_follow_the_iou_thresholds() -> None:
    ious = np.array([1.0, 0.95, 0.9499, 0.8, 0.7999, 0.0])
    assert GradeRule().grades(ious).tolist() == [1, 1, 2, 2, 3, 3]
    assert GradeRule(good=0.9, usable=0.5).grades(ious).tolist() == [1, 1, 1, 2, 2, 3]


def test_grade_rule_refuses_disorder_and_nan() -> None:
    with pytest.raises(ValueError, match="usable <= good"):
        GradeRule(good=0.7, usable=0.8)
    with pytest.raises(ValueError, match="NaN"):
        GradeRule().grades(np.array([0.5, np.nan]))


@pytest.fixture(scope="module")
def factory_masks() -> list[np.ndarray]:
    types = synthetic.DEFAULT_TYPES[:5]
    return [
        synthetic.render_sample(t, np.random.default_rng(i), 96).mask for i, t in enumerate(types)
    ]


@pytest.mark.parametrize("how", DEGRADATIONS)
@pytest.mark.parametrize("target", [0.35, 0.6, 0.85, 0.97])
def test_degradations_reach_the_iou_they_claim(
    factory_masks: list[np.ndarray], how: str, target: float
) -> None:
    rng = np.random.default_rng(1)
    tolerance = 0.04 if how == "shift" else 0.01
    for mask in factory_masks:
        degraded = degrade(mask, how, target, rng)
        assert abs(iou(degraded, mask) - target) < tolerance, (how, target)
        assert not np.array_equal(degraded, mask)


def test_degrade_refuses_unknown_kinds_and_targets() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(mask, "melt", 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside"):
        degrade(mask, "erode", 1.5, np.random.default_rng(0))
    assert np.array_equal(degrade(mask, "erode", 1.0, np.random.default_rng(0)), mask)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.71])
def test_soft_maps_give_back_their_mask_and_are_soft(
    factory_masks: list[np.ndarray], threshold: float
) -> None:
    rng = np.random.default_rng(2)
    for mask in factory_masks:
        probs = soft_map(mask, threshold, rng)
        assert np.array_equal(
            binary_mask(torch.from_numpy(probs)[None], threshold)[0].numpy(), mask
        )
        assert np.unique(np.round(probs, 2)).size > 20  # a gradient, not a 0/1 image


def test_entropy_baseline_is_bits_per_pixel() -> None:
    maps = np.stack([np.full((4, 4), 0.5), np.zeros((4, 4)), np.full((4, 4), 0.11)])
    expected = [1.0, 0.0, -(0.11 * np.log2(0.11) + 0.89 * np.log2(0.89))]
    np.testing.assert_allclose(mean_entropy(maps.astype(np.float32)), expected, atol=1e-5)
    assert mean_entropy(np.full((1, 2, 2), 128, np.uint8))[0] == pytest.approx(1.0, abs=1e-4)


def test_samples_hold_real_predictions_and_graded_degraded_masks() -> None:
    images, truth, types = squares(30)
    predictors = [stand_in(BrightPixels, 0.4, "bright"), stand_in(LeftHalf, 0.6)]
    samples = build_review_samples(
        images, truth, types, predictors, degraded_share=0.5, seed=3, batch_size=8
    )
    real = samples.is_prediction
    assert len(samples) == 120 and real.sum() == 60
    assert samples.models[real].tolist() == ["bright"] * 30 + ["model-1"] * 30
    assert set(samples.kinds[~real]) <= {f"degraded:{how}" for how in DEGRADATIONS}
    # The mask under review is exactly what the reviewer's input rebuilds from the map.
    rebuilt = binary_mask(torch.from_numpy(samples.probabilities), samples.thresholds).numpy()
    assert np.array_equal(rebuilt, samples.masks)
    truths = samples.true_masks[samples.image_index]
    np.testing.assert_allclose(samples.ious, mask_ious(samples.masks, truths))
    bright = samples.models == "bright"
    np.testing.assert_allclose(samples.ious[bright], 1.0)
    np.testing.assert_allclose(samples.flip_disagreement[bright], 0.0)
    np.testing.assert_allclose(samples.flip_disagreement[samples.models == "model-1"], 1.0)
    assert np.isnan(samples.flip_disagreement[~real]).all()
    assert np.isfinite(samples.entropy).all()
    degraded_grades = samples.grades(GradeRule())[~real]
    assert {1, 2, 3} <= set(degraded_grades.tolist())


@pytest.mark.parametrize(("share", "expected"), [(0.0, 0), (0.25, 10), (0.5, 30), (1.0, 30)])
def test_the_degraded_share_sets_their_count(share: float, expected: int) -> None:
    images, truth, types = squares(30)
    samples = build_review_samples(
        images, truth, types, [stand_in(BrightPixels)], degraded_share=share, seed=0
    )
    assert int((~samples.is_prediction).sum()) == expected
    assert int(samples.is_prediction.sum()) == (0 if share == 1.0 else 30)


def test_samples_are_reproducible_from_the_seed() -> None:
    images, truth, types = squares(12)
    first, again, other = (
        build_review_samples(images, truth, types, [], degraded_share=1.0, seed=seed)
        for seed in (5, 5, 6)
    )
    assert np.array_equal(first.probabilities, again.probabilities)
    assert not np.array_equal(first.probabilities, other.probabilities)


def test_predictors_must_take_the_images_size() -> None:
    images, truth, types = squares(4)
    wrong = Predictor(torch.nn.Identity(), ModelConfig(encoder_weights=None, input_size=64))
    with pytest.raises(ValueError, match="takes 64"):
        build_review_samples(images, truth, types, [wrong], degraded_share=0.0, seed=0)


def test_take_keeps_only_the_images_it_needs() -> None:
    images, truth, types = squares(10)
    samples = build_review_samples(
        images, truth, types, [stand_in(BrightPixels)], degraded_share=0.5, seed=0
    )
    part = samples.take(samples.sample_types == "b")
    assert len(part.images) == 5 and set(part.image_types) == {"b"}
    assert np.array_equal(part.sample_images(), samples.sample_images(samples.sample_types == "b"))
    np.testing.assert_array_equal(part.ious, samples.ious[samples.sample_types == "b"])


def test_split_by_type_holds_types_out() -> None:
    seen, held = split_by_type(["a", "b", "c", "a"], ["b"])
    assert seen.tolist() == [True, False, True, True] and held.tolist() == [
        False,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="without images"):
        split_by_type(["a"], ["z"])
    with pytest.raises(ValueError, match="every image type"):
        split_by_type(["a", "a"], ["a"])
