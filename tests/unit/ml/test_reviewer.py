"""The reviewer network, its input, its stored form and a training run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import get_encoder
from sklearn.metrics import roc_auc_score

from maskfind_pipeline.ml.device import select_device
from maskfind_pipeline.ml.reviewer.config import GradeRule, ReviewerSpec, ReviewerTrainConfig
from maskfind_pipeline.ml.reviewer.data import ReviewerSamples, mask_ious, mean_entropy
from maskfind_pipeline.ml.reviewer.degrade import soft_map
from maskfind_pipeline.ml.reviewer.model import (
    InvalidReviewerWeights,
    ReviewerModel,
    build_reviewer,
    grade_probabilities,
    reviewer_inputs,
)
from maskfind_pipeline.ml.reviewer.train import (
    class_weights,
    evaluate_on,
    grade_targets,
    train_reviewer,
)
from maskfind_pipeline.ml.segmentation.config import ModelSpec
from maskfind_pipeline.ml.segmentation.predict import weights_to_bytes
from maskfind_pipeline.ml.weights.pretrained import WEIGHTS_ENV_VAR, load_encoder_weights

SIZE = 32
TINY = ReviewerSpec(encoder_name="tu-resnet10t", encoder_weights=None, input_size=SIZE)
EXACT = select_device("cpu", mixed_precision=False)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)


def batch(count: int = 2, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.rand(count, 1, size, size, generator=generator)


def test_inputs_are_the_normalised_image_the_map_and_the_mask() -> None:
    spec = TINY.model_copy(update={"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)})
    images, probs = batch()
    probs[0, 0, 0, :4] = torch.tensor([0.5, 0.4999, 0.5001, 1.0])
    inputs = reviewer_inputs(images, probs, 0.5, spec)
    assert inputs.shape == (2, 5, SIZE, SIZE) and inputs.dtype == torch.float32
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(inputs[:, :3], (images.float() / 255 - mean) / std)
    torch.testing.assert_close(inputs[:, 3:4], probs * 2 - 1)
    assert torch.equal(inputs[:, 4:5] > 0, probs >= 0.5)
    assert set(inputs[:, 4].unique().tolist()) == {-1.0, 1.0}
    assert inputs[0, 4, 0, :4].tolist() == [1.0, -1.0, 1.0, 1.0]


def test_thresholds_apply_per_sample_and_to_quantised_maps() -> None:
    images, _ = batch()
    quantised = torch.full((2, 1, SIZE, SIZE), 128, dtype=torch.uint8)
    inputs = reviewer_inputs(images, quantised, np.array([0.5, 0.51], np.float32), TINY)
    assert (inputs[0, 4] == 1).all() and (inputs[1, 4] == -1).all()
    torch.testing.assert_close(inputs[:, 3], torch.full((2, SIZE, SIZE), 128 / 255 * 2 - 1))
    same = reviewer_inputs(images, quantised, torch.tensor([0.5, 0.51]), TINY)
    torch.testing.assert_close(same, inputs)


def test_inputs_of_another_size_are_resized_after_thresholding() -> None:
    images, probs = batch(size=64)
    probs[:] = 0.0
    probs[..., :, :33] = 0.9  # 33 columns: column 16 of the half-size mask is half covered
    inputs = reviewer_inputs(images, probs, 0.5, TINY)
    assert inputs.shape == (2, 5, SIZE, SIZE)
    covered = (inputs[0, 4, 5] + 1) / 2
    assert covered[:16].min() > 0.99 and covered[17:].max() < 0.01
    assert 0.2 < covered[16] < 0.8


def test_bad_inputs_are_refused() -> None:
    images, probs = batch()
    with pytest.raises(ValueError, match="uint8 images"):
        reviewer_inputs(images.float(), probs, 0.5, TINY)
    with pytest.raises(ValueError, match="probabilities"):
        reviewer_inputs(images, probs[:, 0], 0.5, TINY)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-tf_efficientnet_lite0"])
def test_five_channels_in_three_grade_logits_out(encoder: str) -> None:
    spec = ReviewerSpec(encoder_name=encoder, encoder_weights=None, input_size=SIZE)
    model = build_reviewer(spec).eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 5 and first.weight.shape[1] == 5
    with torch.no_grad():
        assert model(reviewer_inputs(*batch(), 0.5, spec)).shape == (2, 3)


def test_shallower_stages_can_join_the_head() -> None:
    spec = TINY.model_copy(update={"pooled_stages": 3})
    model = build_reviewer(spec).eval()
    channels = get_encoder(TINY.encoder_name, depth=5).out_channels[-3:]
    linear = next(m for m in model.head.modules() if isinstance(m, torch.nn.Linear))
    assert linear.in_features == 2 * sum(channels)
    with torch.no_grad():
        assert model(reviewer_inputs(*batch(), 0.5, spec)).shape == (2, 3)


def test_pretrained_filters_are_widened_as_smp_widens_them(tmp_path) -> None:
    torch.manual_seed(3)
    source = get_encoder("resnet18", in_channels=3, depth=5, weights=None)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    spec = ReviewerSpec(
        encoder_name="resnet18", encoder_weights="imagenet", encoder_weights_path=str(path)
    )
    model = build_reviewer(spec, pretrained=True)
    pretrained = source.state_dict()["conv1.weight"]
    widened = model.encoder.state_dict()["conv1.weight"]
    for channel in range(5):
        torch.testing.assert_close(widened[:, channel], pretrained[:, channel % 3] * 3 / 5)
    torch.testing.assert_close(
        model.encoder.state_dict()["layer4.1.conv2.weight"],
        source.state_dict()["layer4.1.conv2.weight"],
    )


def test_lite0_reviewer_loads_the_bundled_imagenet_weights_offline() -> None:
    model = build_reviewer(ReviewerSpec(input_size=SIZE), pretrained=True)
    holder = torch.nn.Module()
    holder.encoder = get_encoder("tu-tf_efficientnet_lite0", in_channels=3, depth=5, weights=None)
    load_encoder_weights(holder, ModelSpec(encoder_name="tu-tf_efficientnet_lite0"))
    reference = holder.encoder.state_dict()
    widened = model.encoder.state_dict()["model.conv_stem.weight"]
    torch.testing.assert_close(widened[:, 3], reference["model.conv_stem.weight"][:, 0] * 3 / 5)
    key = "model.blocks.6.0.conv_pw.weight"
    torch.testing.assert_close(model.encoder.state_dict()[key], reference[key])


def test_spec_round_trips_through_json() -> None:
    spec = ReviewerSpec(
        encoder_name="resnet18",
        encoder_weights=None,
        input_size=96,
        mean=(0.1, 0.2, 0.3),
        dropout=0.0,
        grades=GradeRule(good=0.9, usable=0.7),
    )
    assert ReviewerSpec.from_json(spec.to_json()) == spec
    assert ReviewerSpec.from_json('{"input_size": 64, "added_later": 1}').input_size == 64
    assert ReviewerSpec.from_json(ReviewerSpec().to_json()) == ReviewerSpec()


def test_a_loaded_reviewer_grades_as_the_trained_one() -> None:
    model = build_reviewer(TINY).eval()
    images, probs = batch(4)
    expected = grade_probabilities(
        model, TINY, images.permute(0, 2, 3, 1).numpy(), probs[:, 0].numpy(), 0.4, placement=EXACT
    )
    loaded = ReviewerModel.from_weights(TINY, weights_to_bytes(model), version="3")
    graded = loaded.grade_batch(images, probs, 0.4)
    np.testing.assert_allclose(graded.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0)
    with pytest.raises(InvalidReviewerWeights):
        ReviewerModel.from_weights(TINY, b"not safetensors")
    other = ReviewerSpec(encoder_name="resnet18", encoder_weights=None)
    with pytest.raises(InvalidReviewerWeights, match="do not fit"):
        ReviewerModel.from_weights(other, weights_to_bytes(model))


def test_soft_targets_share_close_calls_between_grades() -> None:
    ious = np.array([1.0, 0.9, 0.8, 0.5])
    np.testing.assert_array_equal(grade_targets(ious, GradeRule(), 0.0), np.eye(3)[[0, 1, 1, 2]])
    soft = grade_targets(ious, GradeRule(), 0.02)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_allclose(soft[2], [0.0, 0.5, 0.5], atol=1e-6)
    assert soft[0, 0] > 0.99 and soft[1, 1] > 0.99 and soft[3, 2] > 0.99


def test_class_weights_balance_the_grades() -> None:
    grades = np.array([1] * 6 + [2] * 3 + [3] * 1)
    np.testing.assert_allclose(class_weights(grades, "balanced"), [10 / 18, 10 / 9, 10 / 3])
    np.testing.assert_allclose(class_weights(grades, "none"), [1, 1, 1])
    np.testing.assert_allclose(class_weights(np.array([1, 1, 3]), "balanced"), [0.75, 1, 1.5])


def squares_to_review(count: int, seed: int) -> ReviewerSamples:
    """Bright squares; half the masks lie on them (grade 1), half elsewhere (grade 3).

    Both kinds of mask come with the same kind of soft map, so only comparing the mask with
    the image tells them apart.
    """
    rng = np.random.default_rng(seed)
    images = np.full((count, SIZE, SIZE, 3), 40, np.uint8)
    truth = np.zeros((count, SIZE, SIZE), bool)
    masks = np.zeros_like(truth)
    side = 10
    for i in range(count):
        row, col = rng.integers(0, SIZE - side, size=2)
        truth[i, row : row + side, col : col + side] = True
        while i % 2 and truth[i, row : row + side, col : col + side].any():
            row, col = rng.integers(0, SIZE - side, size=2)
        masks[i, row : row + side, col : col + side] = True
    images[truth] = 200
    images = np.clip(images + rng.normal(0, 10, images.shape), 0, 255).astype(np.uint8)
    probs = np.stack([soft_map(m, 0.5, rng) for m in masks])
    quantised = np.rint(probs * 255).astype(np.uint8)
    masks = quantised >= 128
    return ReviewerSamples(
        images=images,
        true_masks=truth,
        image_types=np.full(count, "squares", object),
        image_index=np.arange(count),
        probabilities=quantised,
        masks=masks,
        thresholds=np.full(count, 0.5, np.float32),
        ious=mask_ious(masks, truth),
        kinds=np.full(count, "prediction", object),
        models=np.full(count, "test", object),
        entropy=mean_entropy(quantised),
        flip_disagreement=np.zeros(count),
    )


def test_a_tiny_reviewer_learns_to_flag_misplaced_masks() -> None:
    train, val, test = (squares_to_review(n, seed) for n, seed in ((64, 0), (32, 1), (64, 2)))
    assert set(train.grades(TINY.grades).tolist()) == {1, 3}
    config = ReviewerTrainConfig(
        epochs=3,
        batch_size=16,
        learning_rate=3e-3,
        device="cpu",
        mixed_precision=False,
        early_stopping_patience=0,
        augment=False,
    )
    epochs = []
    result = train_reviewer(TINY, config, train, val, on_epoch=epochs.append, progress_bar=False)
    assert [e.epoch for e in epochs] == [1, 2, 3] and len(result.history) == 3
    assert result.best_epoch == max(epochs, key=lambda e: (e.val_auc_grade3, -e.val_loss)).epoch
    assert next(result.model.parameters()).device.type == "cpu" and not result.model.training
    probs, evaluations = evaluate_on(result.model, TINY, test, placement=EXACT)
    auc = roc_auc_score(test.grades(TINY.grades) == 3, probs[:, 2])
    assert auc > 0.8, auc
    assert set(evaluations) == {"mix", "real"}  # no degraded masks in this set
    assert evaluations["real"].scores["reviewer"].auc_grade3 == pytest.approx(auc)
    assert result.val_evaluation.scores["reviewer"].auc_grade3 > 0.8
    assert result.metrics()["best_epoch"] == result.best_epoch
    assert {"training_curves", "val_roc_grade3", "val_risk_coverage", "val_confusion"} <= set(
        result.plots
    )
    assert all(png.startswith(PNG) for png in result.plots.values())
