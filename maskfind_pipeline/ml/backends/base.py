"""The backend interface and the one graph every backend runs: preprocessing, model (with the
config's test-time augmentation), sigmoid, the image features (`ml.novelty.features`) of the plain
pass, and the flip disagreement of the plain and the mirrored pass (`ml.segmentation.tta`)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn

from maskfind_pipeline.ml.novelty.features import segment_with_features
from maskfind_pipeline.ml.segmentation.config import ModelConfig
from maskfind_pipeline.ml.segmentation.tta import (
    averaged_logits,
    flip_disagreement,
    mirrored_logits,
)


class Prediction(NamedTuple):
    """What a backend returns for a batch of B images at the model's input size S, from one
    run of `ProbabilityModel`: float32 CPU tensors.

    Attributes:
        probabilities: Sigmoid probabilities (B,1,S,S).
        features: `ml.novelty.features.pooled_features` (B,D): the encoder's two deepest stages,
            spatially averaged (D = the sum of their channels).
        flip_disagreement: `ml.segmentation.tta.flip_disagreement` (B,) of the plain and
            the mirrored pass at the model's threshold: a free signal of an untrustworthy mask.
    """

    probabilities: torch.Tensor
    features: torch.Tensor
    flip_disagreement: torch.Tensor


class InferenceBackend(Protocol):
    """A model version ready to predict on the CPU with one runtime."""

    @property
    def name(self) -> str:
        """The backend's name (`config.BackendName`)."""
        ...

    def predict(self, images: torch.Tensor) -> Prediction:
        """Probabilities and features of uint8 RGB images (B,3,S,S) on the CPU at the model's
        input size S, from one run of the graph."""
        ...

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """`predict(images).probabilities`: float32 (B,1,S,S) on the CPU."""
        ...


class ProbabilityModel(nn.Module):
    """`model` with its input preprocessing and output sigmoid, the image features of the
    same pass and the flip disagreement: uint8 images (B,3,S,S) in, (probabilities (B,1,S,S),
    features (B,D), flip disagreement (B,)) out.

    The arithmetic is `ml.segmentation.model.preprocess`'s (one multiply, one subtract, float32
    constants), the pass is `ml.novelty.features.segment_with_features` and the logits are averaged
    over the config's test-time augmentation views (`ml.segmentation.tta`), so in float32 it gives
    the Predictor's probabilities and the features' one definition; exported, it makes every runtime
    take the same uint8 input and give the same three outputs. The mirrored pass is the one
    `tta_flip` averages in (so it costs nothing more with test-time flipping; one more pass without
    it). The sigmoid, the features and the disagreement are computed in float32 whatever precision
    the network runs in (e.g. under bf16 autocast).
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = images.float() * self.scale - self.shift
        plain, features = segment_with_features(self.model, inputs)
        mirrored = mirrored_logits(self.model, inputs)
        logits = averaged_logits(self.model, inputs, self.config, plain, mirrored)
        disagreement = flip_disagreement(plain, mirrored, self.config.threshold)
        return torch.sigmoid(logits), features, disagreement


def check_images(images: torch.Tensor, size: int) -> None:
    """Refuse anything but a non-empty uint8 CPU batch (B,3,size,size).

    Raises:
        ValueError: Wrong dtype, device or shape.
    """
    shape = (3, size, size)
    wrong_type = images.dtype != torch.uint8 or images.device.type != "cpu"
    if wrong_type or images.ndim != 4 or images.shape[1:] != shape or not len(images):
        raise ValueError(
            f"expected uint8 CPU images (B>0, {', '.join(map(str, shape))}), got "
            f"{images.dtype} {tuple(images.shape)} on {images.device}"
        )
