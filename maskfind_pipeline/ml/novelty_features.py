"""Features of images for fitting and calibrating the novelty model (`ml.novelty`).

Production gets the same features from the inference backends in the mask's forward pass; this
computes them for training and validation images: the predictor's encoder only (the decoder
does not change them), float32 without autocast, in batches.
"""

from __future__ import annotations

import numpy as np
import torch

from maskfind_pipeline.ml.features import pooled_features
from maskfind_pipeline.ml.model import preprocess
from maskfind_pipeline.ml.predict import Predictor, model_input


@torch.inference_mode()
def features_of(predictor: Predictor, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`ml.features.pooled_features` (N, D) float32 of RGB uint8 images (N, H, W, 3).

    Images of another size than the model's are resized as inference resizes them
    (`ml.predict.model_input`). The model is in eval mode while it runs.

    Raises:
        ValueError: images are not (N, H, W, 3) uint8 with N >= 1, or batch_size < 1.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or not len(images):
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, was_training = predictor.model, predictor.model.training
    model.eval()
    try:
        chunks = [
            _batch_features(predictor, images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


def _batch_features(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    size, settings = predictor.config.input_size, predictor.settings
    if images.shape[1:3] == (size, size):
        batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
    else:
        batch = torch.stack([model_input(image, size) for image in images])
    batch = batch.to(settings.device).contiguous(memory_format=settings.memory_format)
    stages = predictor.model.get_submodule("encoder")(preprocess(batch, predictor.config))
    return pooled_features(stages).cpu().numpy().astype(np.float32)
