"""The backend interface and the one graph every backend runs: preprocessing, model, sigmoid."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from maskfind_pipeline.ml.config import ModelSpec


class InferenceBackend(Protocol):
    """A model version ready to predict on the CPU with one runtime."""

    @property
    def name(self) -> str:
        """The backend's name (`config.BackendName`)."""
        ...

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities, float32 (B,1,S,S) on the CPU, of uint8 RGB images (B,3,S,S)
        on the CPU at the model's input size S."""
        ...


class ProbabilityModel(nn.Module):
    """`model` with its input preprocessing and output sigmoid: uint8 images in, probabilities out.

    The arithmetic is `ml.model.preprocess`'s (one multiply, one subtract, float32 constants),
    so in float32 it gives the Predictor's numbers; exported, it makes every runtime take the
    same uint8 input.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, config: ModelSpec) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images.float() * self.scale - self.shift))


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
