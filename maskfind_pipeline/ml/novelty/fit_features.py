"""Features of images for fitting and calibrating the novelty model (`ml.novelty.model`).

Production gets the same features from the inference backends in the mask's forward pass; this
computes them for training and validation images: the predictor's encoder only (the decoder
does not change them), float32 without autocast, in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from maskfind_pipeline.data.decoded import Pixels
from maskfind_pipeline.ml.novelty.features import pooled_features
from maskfind_pipeline.ml.novelty.model import NoveltyConfig, NoveltyModel
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.model import build_model, preprocess
from maskfind_pipeline.ml.segmentation.predict import Predictor, model_input
from maskfind_pipeline.ml.weights.pretrained import PretrainedWeightsUnavailable


def fit_novelty(
    predictor: Predictor,
    images: Pixels,
    image_types: Sequence[str],
    splits: Sequence[str],
    config: NoveltyConfig,
) -> NoveltyModel:
    """The novelty model of a trained mask model: fitted on the features of the `train` rows of
    `images` (e.g. a dataset version's decoded memory map) and their image types, its
    threshold calibrated on the `val` rows (on the train rows when there are none; `info`
    records which). `imagenet` features fall back to `model` (recorded in the returned
    model's config) when the model has no pretrained encoder weights here.

    Raises:
        ValueError: fewer than two train rows.
    """
    rows = {s: np.flatnonzero(np.asarray(splits) == s) for s in ("train", "val")}
    if len(rows["train"]) < 2:
        raise ValueError(f"the novelty model needs >= 2 training images, got {len(rows['train'])}")
    try:
        reference = feature_predictor(predictor.config, config)
    except PretrainedWeightsUnavailable:  # trained from scratch: no ImageNet encoder here
        reference = None
    if reference is None:
        config = config.model_copy(update={"features": "model"})
    predictor = reference or predictor
    train = features_of(predictor, images, rows=rows["train"])
    types = [image_types[int(i)] for i in rows["train"]]
    model = NoveltyModel.fit(train, types, config)
    calibration = "val" if len(rows["val"]) else "train"
    held = features_of(predictor, images, rows=rows["val"]) if len(rows["val"]) else train
    calibrated = model.calibrate(held)
    return replace(calibrated, info={**calibrated.info, "calibrated_on": calibration})


def feature_predictor(model: ModelConfig, config: NoveltyConfig) -> Predictor | None:
    """The network whose encoder gives the novelty features when they are not the mask
    model's own: for `imagenet`, the model's architecture with its pretrained encoder weights
    (from a local source, as training loads them); None for `model` or a model without
    pretrained encoder weights.

    Raises:
        PretrainedWeightsUnavailable: the weights are not available locally.
    """
    if config.features == "model" or model.encoder_weights is None:
        return None
    return Predictor(build_model(model, pretrained=True).eval(), model)


@torch.inference_mode()
def encoder_features(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    """`pooled_features` (B, D) float32 of uint8 images (B, 3, S, S) at the model's input size,
    through the predictor's encoder only."""
    placement = predictor.placement
    batch = images.to(placement.device).contiguous(memory_format=placement.memory_format)
    stages = predictor.model.get_submodule("encoder")(preprocess(batch, predictor.config))
    return pooled_features(stages).float().cpu()


@torch.inference_mode()
def features_of(
    predictor: Predictor,
    images: Pixels,
    batch_size: int = 64,
    *,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """`ml.novelty.features.pooled_features` (N, D) float32 of RGB uint8 images (N, H, W, 3), or of
    `images[rows]` read a batch at a time (a memory map stays on disk).

    Images of another size than the model's are resized as inference resizes them
    (`ml.segmentation.predict.model_input`). The model is in eval mode while it runs.

    Raises:
        ValueError: images are not (N, H, W, 3) uint8 with N >= 1, or batch_size < 1.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    order = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    if not len(order):
        raise ValueError("no images to compute features of")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, was_training = predictor.model, predictor.model.training
    model.eval()
    try:
        chunks = [
            _batch_features(predictor, np.asarray(images[order[start : start + batch_size]]))
            for start in range(0, len(order), batch_size)
        ]
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


def _batch_features(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    size = predictor.config.input_size
    if images.shape[1:3] == (size, size):
        batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
    else:
        batch = torch.stack([model_input(image, size) for image in images])
    return encoder_features(predictor, batch).numpy()
