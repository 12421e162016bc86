"""The novelty score: it ranks new image types above known ones, calibrates, stores, alarms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from maskfind_pipeline.ml.novelty.features import segment_with_features
from maskfind_pipeline.ml.novelty.fit_features import features_of, fit_novelty
from maskfind_pipeline.ml.novelty.model import (
    NoveltyConfig,
    NoveltyModel,
    day_alarms,
    from_files,
    to_files,
)
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.model import build_model, preprocess
from maskfind_pipeline.ml.segmentation.predict import Predictor, model_input

DIM = 24
SIGMA = 0.3
METHODS = [NoveltyConfig(), NoveltyConfig(method="knn", k=3)]
TINY = ModelConfig(
    encoder_name="resnet18", encoder_weights=None, input_size=32, decoder_channels=(16, 8, 8, 8, 8)
)


def clusters(
    per_type: int, seed: int = 0, centres: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Three image types: Gaussian clusters around fixed positive centres (like pooled ReLU
    activations), features (3 * per_type, DIM) and their types."""
    rng = np.random.default_rng(seed)
    centres = centres if centres is not None else _centres()
    x = np.concatenate([c + rng.normal(0, SIGMA, (per_type, DIM)) for c in centres])
    types = np.repeat(["a", "b", "c"], per_type)
    return x.astype(np.float32), types


def _centres() -> np.ndarray:
    return np.random.default_rng(99).uniform(1, 4, (3, DIM))


def auroc(known: np.ndarray, new: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(known)), np.ones(len(new))]
    return float(roc_auc_score(labels, np.r_[known, new]))


@pytest.mark.parametrize("config", METHODS, ids=lambda c: c.method)
def test_a_shifted_cluster_scores_higher_than_known_types(config: NoveltyConfig) -> None:
    x, types = clusters(100)
    model = NoveltyModel.fit(x, types, config)
    known, _ = clusters(50, seed=1)
    shifted = _centres()[0] + np.random.default_rng(2).normal(0, SIGMA, (150, DIM))
    shifted[:, : DIM // 2] += 1.5  # a new type: type a with half its channels brighter
    result = auroc(model.scores(known), model.scores(shifted.astype(np.float32)))
    assert result > 0.97, result


def test_mahalanobis_measures_to_the_nearest_type_not_to_the_overall_mean() -> None:
    x, types = clusters(100)
    model = NoveltyModel.fit(x, types, NoveltyConfig())
    centres = _centres()
    noise = np.random.default_rng(3).normal(0, SIGMA, (100, DIM))
    between = (centres[0] + centres[1]) / 2 + noise
    known, _ = clusters(30, seed=4)
    # One Gaussian over all training images would find these typical: they sit in its middle.
    assert auroc(model.scores(known), model.scores(between.astype(np.float32))) > 0.97


def test_mahalanobis_weighs_directions_by_the_shared_covariance() -> None:
    rng = np.random.default_rng(5)
    scale = np.ones(DIM)
    scale[0] = 10.0  # channel 0 varies a lot within every type, channel 1 hardly
    x = rng.normal(0, 1, (400, DIM)) * scale + 20
    model = NoveltyModel.fit(x, np.repeat(["a", "b"], 200), NoveltyConfig(normalise="none"))
    along_wide, along_narrow = np.full((1, DIM), 20.0), np.full((1, DIM), 20.0)
    along_wide[0, 0] += 8.0
    along_narrow[0, 1] += 8.0
    assert model.scores(along_narrow)[0] > 4 * model.scores(along_wide)[0]


@pytest.mark.parametrize("config", METHODS, ids=lambda c: c.method)
def test_the_calibrated_threshold_flags_one_minus_quantile(config: NoveltyConfig) -> None:
    config = config.model_copy(update={"quantile": 0.9})
    model = NoveltyModel.fit(*clusters(200), config)
    assert model.threshold is None
    val, _ = clusters(400, seed=1)
    calibrated = model.calibrate(val)
    assert abs(calibrated.is_novel(calibrated.scores(val)).mean() - 0.1) < 0.005
    fresh, _ = clusters(1000, seed=2)
    assert abs(calibrated.is_novel(calibrated.scores(fresh)).mean() - 0.1) < 0.03
    assert calibrated.info["n_val"] == 1200


def test_an_uncalibrated_model_refuses_to_flag() -> None:
    model = NoveltyModel.fit(*clusters(20), NoveltyConfig())
    with pytest.raises(ValueError, match="calibrate"):
        model.is_novel(np.zeros(3))


@pytest.mark.parametrize("config", METHODS, ids=lambda c: c.method)
def test_stored_and_loaded_it_scores_identically(config: NoveltyConfig) -> None:
    config = config.model_copy(update={"quantile": 0.95, "min_count": 7})
    model = NoveltyModel.fit(*clusters(60), config).calibrate(clusters(20, seed=1)[0])
    tensors, meta = model.to_bytes()
    loaded = NoveltyModel.from_bytes(tensors, meta)
    probe, _ = clusters(40, seed=3)
    assert np.array_equal(loaded.scores(probe), model.scores(probe))
    assert (loaded.config, loaded.threshold, loaded.image_types) == (
        config,
        model.threshold,
        ("a", "b", "c"),
    )
    assert json.loads(meta)["threshold"] == model.threshold


def test_loading_refuses_another_format_and_missing_arrays() -> None:
    tensors, meta = NoveltyModel.fit(*clusters(20), NoveltyConfig()).to_bytes()
    with pytest.raises(ValueError, match="format"):
        NoveltyModel.from_bytes(tensors, json.dumps({**json.loads(meta), "format": 99}))
    knn_meta = json.loads(meta)
    knn_meta["config"]["method"] = "knn"
    with pytest.raises(ValueError, match="bank"):
        NoveltyModel.from_bytes(tensors, json.dumps(knn_meta))


def test_knn_measures_the_kth_nearest_training_image() -> None:
    bank = np.eye(4, dtype=np.float32)[:3]  # three unit vectors
    model = NoveltyModel.fit(bank, ["a", "a", "b"], NoveltyConfig(method="knn", k=2))
    probe = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)  # cosines 0.894, 0.447, 0
    assert model.scores(probe)[0] == pytest.approx(1 - 1 / 5**0.5, abs=1e-6)


def test_knn_keeps_at_most_max_bank_features() -> None:
    model = NoveltyModel.fit(*clusters(50), NoveltyConfig(method="knn", max_bank=40))
    assert model.arrays["bank"].shape == (40, DIM)


def test_features_of_the_wrong_width_or_not_finite_are_refused() -> None:
    model = NoveltyModel.fit(*clusters(20), NoveltyConfig())
    with pytest.raises(ValueError, match="features"):
        model.scores(np.zeros((2, DIM + 1), np.float32))
    bad = np.zeros((2, DIM), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.scores(bad)


def test_the_config_refuses_a_quantile_outside_zero_one() -> None:
    with pytest.raises(ValidationError):
        NoveltyConfig(quantile=1.0)


# --- the day alarm -------------------------------------------------------------------------


def day(novel: dict[str, tuple[int, int]]) -> tuple[list[str], np.ndarray]:
    """Image types and novel flags: {type: (novel, total)}."""
    types = [t for t, (_, total) in novel.items() for _ in range(total)]
    flags = np.concatenate([np.arange(total) < n for n, total in novel.values()])
    return types, flags


def test_day_alarms_name_exactly_the_type_whose_share_reaches_the_minimum() -> None:
    config = NoveltyConfig(min_share=0.25, min_count=5)
    types, flags = day({"new": (12, 40), "known": (9, 40), "rare": (4, 4), "quiet": (0, 30)})
    # new: 30 % of 40; known: 22.5 % (share below); rare: 100 % but only 4 (count below).
    alarms = day_alarms(types, flags, config)
    assert [(a.image_type, a.novel, a.total) for a in alarms] == [("new", 12, 40)]
    assert alarms[0].share == pytest.approx(0.3)
    assert [
        a.image_type for a in day_alarms(types, flags, config.model_copy(update={"min_share": 0.2}))
    ] == ["new", "known"]


def test_day_alarms_take_scores_with_a_threshold_and_skip_images_without_one() -> None:
    types = ["x"] * 10 + ["y"] * 10
    scores = np.r_[np.full(5, 3.0), np.full(5, np.nan), np.full(10, 1.0)]
    alarms = day_alarms(types, scores, NoveltyConfig(min_count=5), threshold=2.0)
    assert [(a.image_type, a.novel, a.total, a.share) for a in alarms] == [("x", 5, 5, 1.0)]
    with pytest.raises(ValueError, match="threshold"):
        day_alarms(types, scores, NoveltyConfig())


def test_day_alarms_group_by_further_tags() -> None:
    types = ["t"] * 20
    tags = [("cam1",)] * 10 + [("cam2",)] * 10
    flags = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    alarms = day_alarms(types, flags, NoveltyConfig(min_share=0.6), tags=tags)
    assert [a.name for a in alarms] == ["t / cam1"]
    assert day_alarms(types, flags, NoveltyConfig(min_share=0.6)) == []


# --- features of images --------------------------------------------------------------------


def tiny_predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model(TINY, pretrained=False).eval(), TINY)


def test_features_of_match_segment_with_features_in_batches() -> None:
    predictor = tiny_predictor()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    got = features_of(predictor, images, batch_size=2)
    inputs = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), TINY)
    with torch.no_grad():
        _, expected = segment_with_features(predictor.model, inputs)
    assert got.dtype == np.float32 and got.shape == (5, 512 + 256)
    # Batches of another size may sum in another order: float32 rounding only.
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_features_of_resize_other_sizes_as_inference_does_and_keep_the_mode() -> None:
    predictor = tiny_predictor()
    predictor.model.train()
    images = np.random.default_rng(1).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    got = features_of(predictor, images, batch_size=8)
    assert predictor.model.training
    batch = torch.stack([model_input(image, 32) for image in images])
    predictor.model.eval()
    with torch.no_grad():
        _, expected = segment_with_features(predictor.model, preprocess(batch, TINY))
    # Batches of another size may sum in another order: float32 rounding only.
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_fit_novelty_fits_on_train_rows_calibrates_on_val_rows_and_round_trips_as_files() -> None:
    predictor = tiny_predictor()
    images = np.random.default_rng(2).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    splits = ["train"] * 5 + ["val"] * 3 + ["test"]
    types = ["a", "b", "a", "b", "a", "a", "b", "a", "c"]
    model = fit_novelty(predictor, images, types, splits, NoveltyConfig(quantile=0.5))
    assert model.image_types == ("a", "b"), "only the train rows' types"
    assert model.info["n_train"] == 5 and model.info["n_val"] == 3
    assert model.info["calibrated_on"] == "val"
    val = features_of(predictor, images[5:8])
    assert model.threshold == pytest.approx(float(np.quantile(model.scores(val), 0.5)), rel=1e-5)
    loaded = from_files(to_files(model))
    assert loaded is not None and loaded.threshold == model.threshold
    assert from_files({}) is None, "a version registered without a novelty model"
    no_val = fit_novelty(predictor, images, types, ["train"] * 9, NoveltyConfig())
    assert no_val.info["calibrated_on"] == "train"
    with pytest.raises(ValueError, match="needs >= 2 training images"):
        fit_novelty(predictor, images, types, ["val"] * 8 + ["train"], NoveltyConfig())
